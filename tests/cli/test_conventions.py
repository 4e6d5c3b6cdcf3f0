"""The command line's conventions (issue 27): grouped help, config files, one CSV vocabulary, progress bars,
the data roles said, the usable models, the end of a run, and no control byte in any line."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import subprocess
from pathlib import Path

import pytest
from helpers import assert_one_line_error, make_folder, run_cli

from transferlab.cli.commands import main
from transferlab.cli.options import DEFAULTS, GROUPS, RANK_OPTIONS, TRAIN_OPTIONS


def _help_entries(text: str) -> dict[str, str]:
    """``-h`` text -> {flag: its whole entry, wrapped lines joined}."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        start = re.match(r"  (--?[\w-]+)", line)
        if start:
            current = start.group(1)
            entries[current] = line.strip()
        elif current and line.startswith("     "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def _sections(text: str) -> dict[str, str]:
    """``-h`` text -> {flag: the header of the group it is listed in}."""
    found, header = {}, None
    for line in text.splitlines():
        if re.fullmatch(r"[a-z][a-z -]*:", line):
            header = line[:-1]
        elif header and re.match(r"  --?[\w-]+", line):
            found[line.split()[0]] = header
    return found


@pytest.mark.parametrize("command", ["train", "study", "rank"])
def test_help_groups_the_options_and_shows_each_default_once(command):
    proc = run_cli(command, "-h")
    assert proc.returncode == 0, proc.stderr
    entries = _help_entries(proc.stdout)
    flags = [flag for _, flag, _ in TRAIN_OPTIONS if command != "rank" or flag in RANK_OPTIONS]
    assert set(flags) <= set(entries), set(flags) - set(entries)
    for entry in entries.values():
        assert len(re.findall(r"\(default\b", entry)) <= 1, entry  # "(default: x)", "(default)", "(default 0: ...)"
    for _, flag, kwargs in TRAIN_OPTIONS:
        value = DEFAULTS[flag[2:].replace("-", "_")]
        if flag in entries and value is not None and kwargs.get("action") != "store_true" and flag != "--data":
            assert f"(default: {value})" in entries[flag], entries[flag]
    sections = _sections(proc.stdout)
    assert all(sections[flag] == group for group, flag, _ in TRAIN_OPTIONS if flag in flags)
    if command == "train":
        headers = list(dict.fromkeys(sections.values()))
        assert headers == ["options", *GROUPS], headers  # argparse's own -h, then every group in order
        assert sections["--nproc"] == "hardware" and sections["--out"] == "output"


def test_a_run_config_round_trips_through_config_and_print_config(tiny_run, tmp_path):
    run, data = tiny_run
    saved = json.loads((run / "config.json").read_text())
    proc = run_cli("train", "--config", run / "config.json", "--print-config", "--out", tmp_path / "again")
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed == {**saved, "out": str(tmp_path / "again")}  # every setting; the file's out is bookkeeping
    assert not (tmp_path / "again").exists()  # printed, not trained
    (tmp_path / "printed.json").write_text(proc.stdout)
    again = run_cli("train", "--config", tmp_path / "printed.json", "--print-config", "--out", tmp_path / "again")
    assert again.stdout == proc.stdout
    # without --out the run goes to the default place, never into the run the file came from
    elsewhere = json.loads(run_cli("train", "--config", run / "config.json", "--print-config").stdout)
    assert elsewhere["out"] == f"runs/{data.name}-mobilenet_v2" != saved["out"]


def test_config_file_sits_between_the_preset_and_the_options(tmp_path):
    file = tmp_path / "run.yaml"  # (PyYAML comes with the report extra)
    file.write_text("data: colors\npreset: d2l\nlr: 1e-4\nepochs: 4\n")  # YAML 1.1 reads 1e-4 as text: a number here
    config = json.loads(run_cli("train", "--config", file, "--print-config").stdout)
    assert (config["preset"], config["optimizer"], config["lr"], config["epochs"]) == ("d2l", "sgd", 1e-4, 4)
    config = json.loads(run_cli("train", "--config", file, "--preset", "default", "--epochs", "6",
                                "--print-config").stdout)
    assert (config["preset"], config["optimizer"], config["lr"], config["epochs"]) == ("default", "adamw", 1e-4, 6)


def test_a_bad_config_file_is_one_line_naming_the_file_and_key(tmp_path):
    bad = {"typo.json": ('{"data": "x", "epochz": 3}', ["typo.json", "unknown key 'epochz'", "did you mean epochs"]),
           "zero.json": ('{"data": "x", "epochs": 0}', ["zero.json", "epochs must be positive"]),
           "text.json": ('{"epochs": "3"}', ["text.json", "epochs must be a whole number"]),
           "ceiling.json": ('{"lr": 5}', ["ceiling.json", "lr 5", "--force"]),
           "list.json": ("[1, 2]", ["list.json", "not a mapping"]),
           "broken.json": ("{", ["broken.json", "not valid JSON"]),
           "run.txt": ("epochs: 3", ["run.txt", "give a .yaml, .yml or .json file"])}
    for name, (text, needles) in bad.items():
        (tmp_path / name).write_text(text)
        assert_one_line_error(run_cli("train", "--config", tmp_path / name, "--data", tmp_path), *needles)
    assert_one_line_error(run_cli("train", "--config", tmp_path / "missing.json"), "missing.json", "cannot read")
    assert_one_line_error(run_cli("train", "--config", tmp_path / "zero.json", "--resume", "--out", tmp_path),
                          "starts a new run")


def _header(text: str) -> list[str]:
    return next(csv.reader(io.StringIO(text)))


def test_predict_evaluate_and_the_run_write_one_csv_vocabulary(tiny_run, tmp_path):
    run, data = tiny_run
    predicted = run_cli("predict", run, data / "val", "--format", "csv")
    assert predicted.returncode == 0, predicted.stderr
    assert run_cli("evaluate", run, "--per-image", tmp_path / "rows.csv", "--quiet").returncode == 0
    headers = {"predict": _header(predicted.stdout), "evaluate": _header((tmp_path / "rows.csv").read_text()),
               "run": _header((run / "test_predictions.csv").read_text())}
    probs = ["prob_blue", "prob_red"]
    assert headers["run"] == headers["evaluate"] == ["path", "label", "predicted", "correct", *probs]
    assert headers["predict"] == ["path", "predicted", *probs, "error"]  # no truth to give: no label, no correct
    rows = list(csv.DictReader(io.StringIO(predicted.stdout)))
    assert len(rows) == 6 and all(r["predicted"] == max(("blue", "red"), key=lambda c: float(r[f"prob_{c}"]))
                                  for r in rows)


class _Terminal(io.StringIO):
    """Standard error as a terminal would be (tqdm draws its bars only there)."""

    def isatty(self) -> bool:
        return True


def _run_on_terminal(*args: object) -> tuple[int, str]:
    """``transferlab ARGS`` in this process with stderr a terminal: exit status and what stderr got."""
    err = _Terminal()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, err.getvalue()


@pytest.mark.parametrize("command", ["predict", "evaluate", "evaluate --tta"])
def test_predict_and_evaluate_draw_a_bar_on_a_terminal_only(tiny_run, command):
    run, data = tiny_run
    argv = [*command.split(), run, *([data / "val", "--batch-size", "2"] if command == "predict" else [])]
    plain = run_cli(*argv)
    assert plain.returncode == 0 and plain.stderr == "", plain.stderr  # not a terminal: no bar, nothing at all
    code, drawn = _run_on_terminal(*argv)
    assert code == 0 and f"{command.split()[0]}:" in drawn and "batch" in drawn and "\r" in drawn, drawn
    code, quiet = _run_on_terminal(*argv, "--quiet")
    assert code == 0 and quiet == "", quiet


def test_the_roles_of_train_and_val_folders_are_said(tmp_path):
    from transferlab.data.datasets import resolve_data

    two = make_folder(tmp_path / "two", {"train": 4, "val": 2})
    three = make_folder(tmp_path / "three", {"train": 4, "val": 2, "test": 3})
    said = {"two": resolve_data(str(two)).describe(), "carved": resolve_data(str(two), val_fraction=0.5).describe(),
            "three": resolve_data(str(three)).describe()}
    assert said["two"] == ("two: 2 classes (blue, red); train/ for training (8 images), val/ as the test split "
                           "(4 images, scored after each epoch; no choice is made on it); no validation split")
    assert said["carved"].endswith("val/ as the test split (4 images, scored once, on the final model); "
                                   "validation: 4 images carved from train/")
    assert said["three"].endswith("test/ as the test split (6 images, scored once, on the final model); "
                                  "val/ as validation (4 images)")
    entry = _help_entries(run_cli("train", "-h").stdout)["--data"]
    assert "train/ and val/ (val/ is the test split here, not validation as timm and Hugging Face read it)" in entry


def test_models_lists_the_usable_ones_and_says_how_many_more():
    proc = run_cli("models")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    rows, footer = lines[1:-1], lines[-1]
    assert lines[0].startswith("MODEL ") and rows and all(": local (" in row for row in rows)
    assert any(row.startswith("mobilenet_v2 ") for row in rows)  # its weights are installed offline
    counts = re.fullmatch(r"(\d+) of ([\d,]+) models shown, those whose ImageNet weights are on this machine; "
                          r"([\d,]+) more \(([\d,]+) download their weights, ([\d,]+) have none\): "
                          r"`transferlab models --all` lists every one", footer)
    assert counts, footer
    shown, total, more, download, none = (int(g.replace(",", "")) for g in counts.groups())
    everything = run_cli("models", "--all").stdout.splitlines()
    assert shown == len(rows) and total == len(everything) - 1 == shown + more and more == download + none
    assert sum(": download" in line for line in everything) == download
    assert run_cli("models", "--local").stdout == proc.stdout  # the old flag: what is listed by default now
    # the filters still narrow both lists, and the hint keeps them
    timm = run_cli("models", "--source", "timm").stdout.splitlines()
    assert all(" timm " in row for row in timm[1:-1]) and "`transferlab models --source timm --all`" in timm[-1]
    resnets = run_cli("models", "resnet1*")
    assert resnets.returncode == 0 and resnets.stdout.splitlines() == [
        "none of the 17 models matching 'resnet1*' has its ImageNet weights on this machine; 17 more (17 download "
        "their weights): `transferlab models 'resnet1*' --all` lists every one"]
    assert len(run_cli("models", "resnet1*", "--all").stdout.splitlines()) == 1 + 17


def test_the_end_of_a_run_names_the_model_and_the_next_commands():
    from transferlab.cli import commands

    test = {"split": "test", "images": 50, "accuracy": 0.86, "balanced_accuracy": 0.85, "macro_f1": 0.8512,
            "nll": 0.3311, "ece": 0.0412, "roc_auc": 0.93,
            "intervals": {"accuracy": [0.74, 0.93], "macro_f1": [0.7, 0.92]},
            "baseline": {"class": "hotdog", "accuracy": 0.5}}
    test["intervals"]["level"] = 0.95  # as the intervals' branch writes them
    metrics = {"test": test, "val": {"split": "val"}, "wall_s": 12.34, "model_stage": "epoch 3", "epochs_trained": 3,
               "selection": {"metric": None, "best_epoch": 3}}
    lines = commands._summary_line(metrics, Path("runs/my run")).splitlines()
    assert lines == [
        "test (50 images, scored once on the final model): accuracy 0.8600 (95% CI 0.74\u20130.93), "
        "balanced_accuracy 0.8500, macro_f1 0.8512 (95% CI 0.70\u20130.92), nll 0.3311, ece 0.0412, roc_auc 0.9300; "
        "always answering hotdog would score 0.5000; 12.3 s; report: runs/my run/report.html",
        "model: runs/my run/model.safetensors (epoch 3, the last)",
        "next: transferlab predict 'runs/my run' IMAGE_OR_DIR | transferlab serve 'runs/my run' | "
        "transferlab export 'runs/my run'"]
    del test["intervals"], test["baseline"], metrics["val"]  # a block of older runs: the scores alone
    first = commands._summary_line(metrics, Path("r")).splitlines()[0]
    assert first.startswith("test (50 images, the final model): accuracy 0.8600, balanced_")  # no validation
    chosen = {**metrics, "model_stage": "head warm-up", "selection": {"metric": "loss", "best_epoch": 0}}
    assert "model: r/model.safetensors (head warm-up, best on validation by loss)" in commands._summary_line(
        chosen, Path("r"))
    assert "(head warm-up, no epoch ran after it)" in commands._summary_line({**chosen, "epochs_trained": 0}, Path("r"))


CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # every control character but \t and \n (\r, \x1b, \x1f...)


def _assert_clean(proc: subprocess.CompletedProcess) -> None:
    """No line of the command's stdout or stderr holds a control character other than a tab."""
    for name, text in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        for line in text.split("\n"):
            assert not CONTROL.search(line), (proc.args, name, line)


def test_no_output_line_holds_a_control_byte(tmp_path, no_run_reports):
    data = make_folder(tmp_path / "colors", {"train": 4, "val": 2})
    run = tmp_path / "run"
    trained = run_cli("train", "--data", data, "--model", "mobilenet_v2", "--image-size", "32", "--batch-size", "8",
                      "--epochs", "1", "--head-warmup-epochs", "1", "--out", run)
    assert trained.returncode == 0, trained.stderr
    _assert_clean(trained)
    # the first line says the roles of train/ and val/; the test scores show once, then the model and what next
    assert trained.stderr.startswith("colors: 2 classes (blue, red); train/ for training (8 images), val/ as the "
                                     "test split (4 images, scored after each epoch; no choice is made on it)")
    assert (trained.stdout + trained.stderr).count("macro_f1") == 1 and trained.stdout.startswith(
        "test (4 images, the final model): accuracy ")
    assert trained.stdout.splitlines()[1:] == [
        f"model: {run / 'model.safetensors'} (epoch 1, the last)",
        f"next: transferlab predict {run} IMAGE_OR_DIR | transferlab serve {run} | transferlab export {run}"]

    bad = make_folder(tmp_path / "inbox", {"": 1})
    (bad / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "typo.json").write_text('{"epochz": 1}')
    (tmp_path / "folder").mkdir()
    commands = [
        (0, ["evaluate", run, "--per-image", tmp_path / "rows.csv"]),
        (0, ["predict", run, data / "val"]),
        (0, ["predict", run, data / "val", "--format", "csv"]),
        (2, ["predict", run, bad]),  # a row that names the error, then one line
        (0, ["report", run]),
        (0, ["models"]),
        (0, ["models", "resnet1*"]),
        (0, ["cache"]),
        (0, ["train", "--config", run / "config.json", "--print-config"]),
        (2, ["models", "nope*"]),
        (2, ["train", "--data", tmp_path / "nope", "--quiet"]),
        (2, ["train", "--data", data, "--model", "mobilenet_v2", "--lr", "5", "--out", tmp_path / "x"]),
        (2, ["train", "--data", data, "--model", "mobilenet_v2", "--freeze", "layer9", "--out", tmp_path / "x"]),
        (2, ["train", "--data", data, "--epochs", "x"]),
        (2, ["train", "--config", tmp_path / "typo.json"]),
        (2, ["train", "--out", tmp_path / "x", "--resume"]),
        (2, ["predict", tmp_path / "nothing", data]),
        (2, ["evaluate", run, "--data", tmp_path / "nope"]),
        (2, ["export", run, "--out", tmp_path / "folder"]),
        (2, ["study", "--study", tmp_path / "nope.yaml", "--data", data]),
    ]
    for code, argv in commands:
        proc = run_cli(*argv)
        assert proc.returncode == code, (argv, proc.stderr)
        _assert_clean(proc)


def test_an_interrupted_run_without_a_folder_names_out_in_words():
    from transferlab.errors import opt
    from transferlab.train.loop import TrainingInterrupted

    stopped = TrainingInterrupted(f"interrupted by SIGINT after epoch 1/3; nothing saved (no {opt('out')})", 2, None)
    assert str(stopped) == "interrupted by SIGINT after epoch 1/3; nothing saved (no out=)" and stopped.exit_code == 130


@pytest.mark.slow  # a study's run and a ranking of mobilenet_v2: about a minute on a busy CPU
def test_no_study_or_ranking_line_holds_a_control_byte(tmp_path, no_run_reports):
    data = make_folder(tmp_path / "colors", {"train": 4, "val": 2})
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps({"name": "tiny", "base": {"image_size": 32, "epochs": 1, "head_warmup_epochs": 1},
                                "variants": {"probe": {"freeze": "body"}}}))
    study = run_cli("study", "--study", spec, "--data", data, "--seeds", "1", "--out", tmp_path / "study")
    assert study.returncode == 0, study.stderr
    _assert_clean(study)
    ranked = run_cli("rank", "--data", data, "--models", "mobilenet_v2,resnet9000", "--image-size", "32",
                     "--epochs", "1", "--out", tmp_path / "rank")
    assert ranked.returncode == 0, ranked.stderr
    _assert_clean(ranked)
    assert "model='resnet9000': unknown model" in ranked.stdout  # the table's note, in words
    assert "\\u001f" not in (tmp_path / "rank" / "rank.json").read_text()

"""Studies: definitions, planning, resume, and the report files (tiny runs on generated images)."""

import json
import re

import pytest
from helpers import make_folder

from transferlab.cli.commands import main
from transferlab.config import make_config
from transferlab.errors import TransferlabError
from transferlab.workflows import study as experiments
from transferlab.workflows.study_spec import BUILTIN_STUDIES, load_study, resolve_freeze, study_from_dict

TINY = {"model": "mobilenet_v2", "image_size": 64, "batch_size": 8, "epochs": 1}


pytestmark = pytest.mark.usefixtures("one_thread", "no_run_reports")  # the study report is read, no run report


@pytest.fixture
def colors(tmp_path):
    return make_folder(tmp_path / "colors", {"train": 4, "val": 2})


def test_builtin_seed_study_has_every_arm():
    study = load_study("seed")
    v = study.variants
    assert v["finetune"] == {} and v["scratch"] == {"weights": "none"} and v["linear_probe"] == {"freeze": "body"}
    assert [v[n].get("freeze") for n in ("freeze_stem", "freeze_half", "freeze_all_but_last")] == \
        ["stem", "half", "all_but_last"]
    assert {v[n]["head_lr_mult"] for n in ("lr_ratio_1", "lr_ratio_100")} == {1.0, 100.0}
    assert v["head_imagenet"] == {"head_init": "imagenet"}
    assert all(m in v for members in study.groups.values() for m in members)
    for name in BUILTIN_STUDIES:
        load_study(name)


def test_symbolic_freeze_follows_the_model_family():
    assert resolve_freeze("half", "resnet18") == "layer2"
    assert resolve_freeze("all_but_last", "resnet18") == "layer3"
    assert resolve_freeze("half", "mobilenet_v2") == "stage2"
    assert resolve_freeze("all_but_last", "mobilenet_v2") == "stage4"
    assert resolve_freeze("stem", "resnet18") == "stem"


# nine levels of nine aliases: 9**9 values once expanded, in a few hundred bytes
ALIAS_BOMB = "name: b\nbase:\n  lr: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  {key}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n"
    for i, key in enumerate(("momentum", "weight_decay", "epochs", "batch_size", "head_lr_mult", "freeze", "model",
                             "data"), start=1)) + "variants:\n  v: {}\n"


@pytest.mark.parametrize("text, suffix, needles", [
    ("variants:\n  probe: {frezee: body}\n", ".yaml", ["variant 'probe'", "frezee"]),
    ('{"variants": {"a": {}}, "colour": 1}', ".json", ["unknown study key", "colour"]),
    ("variants:\n  a: {seed: 3}\n", ".yaml", ["variant 'a'", "seed", "seeds="]),
    ("variants:\n  a: {epochs: 0}\n", ".yaml", ["variant 'a'", "epochs= must be positive"]),
    ("variants:\n  a: {}\ngroups:\n  g: [a, b]\n", ".yaml", ["group 'g'", "no variant named b"]),
    ("variants: [a, b]\n", ".yaml", ["'variants' must map"]),
    ("variants: {a: {}\n", ".yaml", ["not valid YAML"]),
    ("variants:\n  a/b: {}\n", ".yaml", ["variant 'a/b'", "folder name"]),
    (ALIAS_BOMB, ".yaml", ["over 10,000 values", "YAML aliases"]),  # refused before any message prints it
    ('{"variants": ' + "[" * 100_000 + "]" * 100_000 + "}", ".json", ["not valid JSON", "recursion"]),
])
def test_study_files_are_validated(tmp_path, text, suffix, needles):
    path = tmp_path / f"mine{suffix}"
    path.write_text(text)
    with pytest.raises(TransferlabError) as info:
        load_study(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_custom_study_with_symbolic_values(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: depth\nbase: {epochs: 2}\nvariants:\n  half: {freeze: half}\n  last: "
                    "{freeze: all_but_last, lr: 0.001}\ngroups:\n  depth: [half, last]\n")
    study = load_study(path)
    assert study.name == "depth" and study.base == {"epochs": 2} and study.groups == {"depth": ["half", "last"]}
    runs = experiments.plan_study(study, make_config(model="resnet18", data="x"), tmp_path / "out", [0, 1])
    assert [(r.variant, r.seed, r.config.freeze) for r in runs] == [
        ("half", 0, "layer2"), ("last", 0, "layer3"), ("half", 1, "layer2"), ("last", 1, "layer3")]
    assert runs[3].run_dir == tmp_path / "out" / "last" / "seed1" and runs[3].config.lr == 0.001


def test_a_probe_variant_gets_the_head_training_of_a_fine_tune(tmp_path):
    study = study_from_dict({"variants": {"finetune": {}, "probe": {"freeze": "body"},
                                          "short_probe": {"freeze": "body", "epochs": 2}}}, "mine.yaml")
    base = make_config(model="resnet18", data="x", epochs=3, head_warmup_epochs=10)
    epochs = {r.variant: r.config.epochs for r in experiments.plan_study(study, base, tmp_path, [0])}
    assert epochs == {"finetune": 3, "probe": 13, "short_probe": 2}  # 10 warm-up + 3; a variant's own epochs win


def test_plan_refuses_what_would_fail_mid_study(colors, tmp_path):
    base = make_config(data=str(colors), **TINY)
    with pytest.raises(TransferlabError, match="variant head_imagenet.*head_map="):
        experiments.plan_study(load_study("seed"), base, tmp_path, [0])
    bad = study_from_dict({"variants": {"x": {"freeze": "layer9"}}}, "mine.yaml")
    with pytest.raises(TransferlabError, match="variant x: freeze='layer9'.*stage1"):
        experiments.plan_study(bad, base, tmp_path, [0])


def test_cli_list_and_errors(tmp_path, capsys):
    assert main(["study", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in load_study("seed").variants)
    bad = tmp_path / "bad.json"
    bad.write_text('{"variants": {"a": {"batchsize": 8}}}')
    assert main(["study", "--study", str(bad), "--data", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("transferlab: error: ") and "batchsize" in err and str(bad) in err and "\n" not in err


@pytest.mark.slow  # nine tiny fine-tunes and a study report
def test_study_report_and_resume(colors, tmp_path, monkeypatch):
    study = study_from_dict({
        "name": "tiny",
        "variants": {"finetune": {}, "half": {"freeze": "half"},
                     "imagenet_head": {"head_init": "imagenet", "head_map": {"red": ["strawberry"], "blue": [1]}}},
        "groups": {"freeze depth": ["finetune", "half"]}}, "tiny.yaml")
    base = make_config(data=str(colors), **TINY)
    out = tmp_path / "study"
    calls = []
    real = experiments.finetune

    def counting(config, **kwargs):
        calls.append(config.out)
        return real(config, **kwargs)

    monkeypatch.setattr(experiments, "finetune", counting)
    summary = experiments.run_study(study, base, out, [0, 1], quiet=True)
    assert len(calls) == 6
    for variant in study.variants:
        for seed in (0, 1):
            assert (out / variant / f"seed{seed}" / "metrics.json").is_file()

    saved = json.loads((out / "summary.json").read_text())
    assert saved["runs_finished"] == 6 and saved["seeds"] == [0, 1]
    by_name = {v["name"]: v for v in saved["variants"]}
    assert by_name["half"]["overrides"] == {"freeze": "half"} and by_name["half"]["changes"] == {"freeze": "stage2"}
    for v in saved["variants"]:
        assert len(v["runs"]) == 2 and v["test_acc_std"] is not None and v["wall_s_mean"] > 0
        assert {"test_acc", "accuracy", "balanced_accuracy", "macro_f1", "wall_s", "curve"} <= set(v["runs"][0])
        assert "best_test_acc" not in v["runs"][0] and v["runs"][0]["accuracy"] == v["runs"][0]["test_acc"]
    means = [v["test_acc_mean"] for v in saved["variants"]]
    assert means == sorted(means, reverse=True)
    assert by_name["imagenet_head"]["zero_shot_acc_mean"] is not None
    assert saved["best_run"]["variant"] == saved["variants"][0]["name"]
    assert summary["study"] == "tiny"

    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for section in ("## Results", "Learning curves", "Final test accuracy by variant", "freeze depth",
                    "Confusion matrix", "## Base config", "## Environment", "torchvision", "zero-shot"):
        assert section in md, section
    assert "figures/curves.png" in md and (out / "figures" / "accuracy.png").is_file()
    assert "variant" in html and "Base config" in html and "95% CI" in html and "src=\"http" not in html
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    # accuracy, curves, group, confusion, and the mistakes grid when the best run made any
    assert len(images) == 4 + bool(saved["best_run"]["mistakes"])
    table = md.split("## Results")[1].split("\n\n")[1]
    assert table.count("\n") == 1 + len(study.variants) and "±" in table

    # restart: nothing left to do
    calls.clear()
    experiments.run_study(study, base, out, [0, 1], quiet=True)
    assert calls == []
    # an interrupted run (no model file yet) is redone, the finished ones are skipped
    for name in ("metrics.json", "model.safetensors"):
        (out / "half" / "seed1" / name).unlink()
    experiments.run_study(study, base, out, [0, 1], quiet=True)
    assert calls == [str(out / "half" / "seed1")]
    # the same folder with other options is refused, not mixed
    with pytest.raises(TransferlabError, match="run with other options.*epochs"):
        experiments.run_study(study, make_config(data=str(colors), **{**TINY, "epochs": 2}), out, [0], quiet=True)


def _fake_run(run_dir, right: int, images: int = 100) -> None:
    """A finished run's metrics.json and test_predictions.csv: the first ``right`` test images right."""
    from transferlab.rundir import predictions_csv

    run_dir.mkdir(parents=True)
    rows = [{"path": f"img{i:03d}.png", "label": "ab"[i % 2],
             "predicted": "ab"[i % 2] if i < right else "ab"[1 - i % 2], "correct": int(i < right),
             "prob_a": 0.5, "prob_b": 0.5} for i in range(images)]
    (run_dir / "test_predictions.csv").write_text(predictions_csv(rows, ["a", "b"]))
    (run_dir / "metrics.json").write_text(json.dumps({
        "test_acc": right / images, "wall_s": 1.0, "class_names": ["a", "b"], "device": "cpu",
        "test": {"images": images, "accuracy": right / images}}))


@pytest.mark.parametrize("probe_right, separated", [(81, False), (98, True)])
def test_a_study_names_a_best_variant_only_when_its_intervals_separate(tmp_path, probe_right, separated):
    """80 vs 81 of 100 images (a one-image margin) ties; 80 vs 98 does not."""
    from transferlab.reporting.study import summarize_study, verdict

    runs = []
    for variant, right in (("finetune", 80), ("probe", probe_right), ("half", 79)):
        for seed in (0, 1):
            _fake_run(tmp_path / variant / f"seed{seed}", right)
            runs.append({"variant": variant, "seed": seed, "run_dir": f"{variant}/seed{seed}"})
    study = {"name": "tie", "variants": {"finetune": {}, "probe": {}, "half": {}}}
    summary = summarize_study(tmp_path, study, {"data": "d", "model": "m"}, {}, runs)
    assert summary["top_variant"] == "probe"
    by_name = {v["name"]: v for v in summary["variants"]}
    assert by_name["probe"]["vs_reference"]["separates"] is separated
    assert not by_name["half"]["vs_reference"]["separates"]
    lo, hi = by_name["probe"]["test_acc_interval"]
    assert lo < probe_right / 100 < hi
    text = verdict(summary)
    if separated:
        assert summary["best_variant"] == "probe" and text.startswith("best: probe, ahead of finetune by +18.0")
    else:
        assert summary["best_variant"] is None
        assert text.startswith("no best variant") and "no variant separates from finetune" in text

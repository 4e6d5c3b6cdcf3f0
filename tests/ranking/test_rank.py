"""Ranking backbones on the training split (`transferlab rank`, `--model auto`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import make_folder, run_cli, run_reports_off

from transferlab import rundir
from transferlab.config import make_config
from transferlab.errors import TransferlabError
from transferlab.ranking.ranker import rank, rank_sample
from transferlab.ranking.result import Candidate, Ranking, pick, reference_limit
from transferlab.train.probes import knn_cv, logme, probe_cv
from transferlab.workflows.finetuning import resolve_model

MODELS = ["mobilenet_v2", "tf_efficientnet_lite0"]  # offline weights that `make setup` installs
SMALL = {"image_size": 32, "epochs": 1, "batch_size": 4}  # the ranking, not its accuracy: tiny crops


def _blobs(n: int, d: int, shift: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, d)) + shift * (2 * y[:, None] - 1)  # class means at +-shift
    return x.astype(np.float32), y


def test_scores_tell_informative_features_from_noise():
    x, y = _blobs(80, 32, 1.0)
    noise, _ = _blobs(80, 32, 0.0, seed=1)
    acc, se, c = probe_cv(x, y)
    assert acc > 0.95 and 0 <= se < 0.05 and c in (0.01, 0.1, 1.0)
    assert probe_cv(noise, y)[0] < 0.75
    assert knn_cv(x, y) > 0.95 and knn_cv(noise, y) < 0.75
    assert logme(x, y) > logme(noise, y)


def test_knn_on_folds_smaller_than_k_still_scores():
    x, y = _blobs(6, 4, 2.0)  # 3 images a class: 3 folds, 4 training images each, fewer than KNN_K
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scikit-learn warns and scores nan when k exceeds a fold
        assert knn_cv(x, y) > 0.5


def test_logme_rises_with_how_much_the_features_say():
    scores = [logme(*_blobs(120, 16, shift)) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert scores == sorted(scores) and len(set(scores)) == 4


def test_cross_validation_needs_two_images_per_class():
    x, y = _blobs(9, 4, 1.0)
    y[0] = 2  # one image of a third class
    with pytest.raises(TransferlabError, match="at least 2 images of every class"):
        probe_cv(x, y)


def _cand(name: str, acc: float, se: float, epoch_s: float, epochs: int = 3, image_s: float = 0.01) -> Candidate:
    return Candidate(name, probe_acc=acc, probe_se=se, epoch_s=epoch_s, finetune_s=epoch_s * epochs, image_s=image_s)


def test_pick_takes_the_best_score_or_a_stronger_one_within_its_noise():
    best, close, far = _cand("small", 0.93, 0.02, 10.0), _cand("big", 0.92, 0.02, 30.0), _cand("weak", 0.85, 0.01, 5)
    assert pick([best, close, far])[0] == "big"  # 0.92 >= 0.93 - 0.02, and three times the compute
    assert "within one standard error" in pick([best, close, far])[1]
    assert pick([best, far])[0] == "small"
    assert pick([_cand("small", 0.93, 0.005, 10.0), close])[0] == "small"  # outside the noise: the score wins
    assert pick([best, close, far], budget=20)[0] == "weak"  # the others' 3 epochs take longer than 20 s
    assert pick([best], budget=1) == (None, "no candidate was scored within the budget")
    assert pick([Candidate("broken", note="no weights")])[0] is None


def test_a_time_limited_pick_weighs_what_fits():
    small, big = _cand("small", 0.93, 0.02, 10.0, image_s=0.01), _cand("big", 0.92, 0.02, 30.0, image_s=0.03)
    # 1,000 images: small's first model takes 10 s, big's 30 s; an epoch 10 s and 30 s
    assert pick([small, big], time_left=60, run_images=1000, epochs=3)[0] == "big"  # 30 + 30 s fit
    assert "1 epoch fit the 60 s left" in pick([small, big], time_left=60, run_images=1000, epochs=3)[1]
    assert pick([small, big], time_left=50, run_images=1000, epochs=3)[0] == "small"  # big fits no epoch
    assert "its first model alone" in pick([small, big], time_left=15, run_images=1000, epochs=3)[1]
    assert pick([small, big], time_left=5, run_images=1000, epochs=3)[0] == "small"  # nothing fits: the cheapest
    # ... unless the limit is only the time the reference would take, already spent: then the score decides
    assert pick([small, big], time_left=5, run_images=1000, epochs=3, hard=False)[0] == "big"
    assert "so the score decides" in pick([small, big], time_left=5, run_images=1000, epochs=3, hard=False)[1]


def test_without_a_time_limit_auto_gets_the_time_the_reference_run_would_take():
    mnv2, big = _cand("mobilenet_v2", 0.90, 0.02, 10.0, image_s=0.01), _cand("big", 0.91, 0.02, 40.0, image_s=0.03)
    assert reference_limit([big, mnv2], 1000, 3) == (40.0, "what mobilenet_v2's 3 epochs would take here")
    assert reference_limit([big], 1000, 3)[0] == 150.0  # no MobileNetV2 ranked: the cheapest candidate's run
    assert reference_limit([Candidate("broken", note="no weights")], 1000, 3) is None
    assert reference_limit([_cand("mobilenet_v2", 0.9, 0.02, 0.1, image_s=1e-4)], 10, 1)[0] == 1.0  # at least 1 s


def test_a_large_training_split_is_ranked_on_a_stratified_sample():
    labels = [0] * 1900 + [1] * 100 + [2] * 8 + [3] * 3
    sample = rank_sample(labels, seed=0, limit=600)
    counts = [sum(labels[i] == k for i in sample) for k in range(4)]
    assert counts == [567, 30, 5, 3]  # in proportion, at least 5 a class (all of a class of 3)
    assert sample == rank_sample(labels, seed=0, limit=600) != rank_sample(labels, seed=1, limit=600)
    assert rank_sample(labels[:500], seed=0, limit=600) is None


@pytest.fixture(scope="module")
def colors(tmp_path_factory) -> Path:
    # colours no other test uses: the feature cache is shared by the session, and these must start cold
    return make_folder(tmp_path_factory.mktemp("rank") / "colors", {"train": 6, "val": 3},
                       classes={"teal": (30, 160, 150), "amber": (225, 165, 35)})


@pytest.fixture(scope="module")
def ranking(colors) -> Ranking:
    return rank(data=str(colors), models=MODELS, quiet=True, **SMALL)


def test_rank_scores_every_candidate_on_the_training_split(ranking, colors):
    assert [c.model for c in ranking.candidates] != [] and {c.model for c in ranking.candidates} == set(MODELS)
    assert ranking.train_images == 10 and ranking.classes == 2 and ranking.picked in MODELS  # 12 less validation
    for c in ranking.candidates:
        assert c.scored and 0.5 <= c.probe_acc <= 1 and 0.5 <= c.knn_acc <= 1 and c.crop == SMALL["image_size"]
        assert c.epoch_s > 0 and c.finetune_s == pytest.approx(c.epoch_s * SMALL["epochs"], abs=0.1)
        assert "local" not in c.note and c.weights
    accs = [c.probe_acc for c in ranking.candidates]
    assert accs == sorted(accs, reverse=True)
    again = Ranking.from_dict(json.loads(json.dumps(ranking.to_dict())))
    assert again == ranking and ranking.picked in ranking.table() and "picked" in ranking.table()
    assert ranking.picked in ranking._repr_html_()


def test_rank_never_reads_the_test_split(colors, monkeypatch):
    import transferlab.ranking.ranker as rank_module

    seen = []
    real = rank_module.decode

    def spy(paths, *args, **kwargs):
        seen.extend(Path(p).parent.parent.name for p in paths)
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(rank_module, "decode", spy)
    rank(data=str(colors), models=MODELS[:1], quiet=True, **SMALL)
    assert seen and set(seen) == {"train"}


def test_the_fine_tune_after_a_ranking_reads_its_cached_features(colors, ranking):
    from transferlab.train.trainer import Trainer

    # the same validation split as the ranking's (a run of the default, auto, carves one)
    trainer = Trainer(make_config(data=str(colors), model=ranking.picked, select_metric="loss", **SMALL), quiet=True)
    trainer.fit()
    # the head warm-up computed the validation and test images' features only: the training images' came from the
    # ranking
    assert trainer.body_passes["images"] == len(trainer.dataset.val) + len(trainer.dataset.test) == 8


def test_a_candidate_without_weights_is_listed_not_picked(colors):
    result = rank(data=str(colors), models=[MODELS[0], "resnet18"], quiet=True, **SMALL)
    missing = next(c for c in result.candidates if c.model == "resnet18")
    assert not missing.scored and missing.note.startswith("no weights") and result.picked == MODELS[0]


def test_a_probe_ranking_costs_no_epoch_time_and_picks_the_best_score(colors):
    result = rank(data=str(colors), models=MODELS, quiet=True, freeze="body", **SMALL)
    assert all(c.epoch_s == 0.0 for c in result.candidates)
    assert result.picked == result.candidates[0].model and "best probe_acc" in result.reason


def test_a_budget_nothing_fits_is_one_line(colors):
    with pytest.raises(TransferlabError, match="raise (--)?budget"):
        rank(data=str(colors), models=MODELS[:1], quiet=True, budget=1e-6, **SMALL)  # one is enough to not fit


def test_auto_refuses_weights_it_cannot_rank(colors):
    with pytest.raises(TransferlabError, match="auto'? ranks ImageNet-pretrained"):
        rank(data=str(colors), models=MODELS, weights="none", quiet=True, **SMALL)


def test_resolve_model_reuses_a_saved_ranking(tmp_path, ranking, monkeypatch):
    import transferlab.ranking.ranker as rank_module

    path = ranking.write(tmp_path / "rank.json")
    monkeypatch.setattr(rank_module, "rank", lambda *a, **k: pytest.fail("ranked again"))
    config, again = resolve_model(make_config(data="x", model="auto"), path)
    assert config.model == ranking.picked and again == ranking
    assert ranking.limit_s and config.time_limit == ranking.limit_s  # no --time-limit: the one the ranking measured
    assert "mobilenet_v2's 1 epoch would take here" in ranking.limit_why
    assert resolve_model(make_config(data="x", model="auto", time_limit=99), path)[0].time_limit == 99
    assert resolve_model(make_config(data="x", model="resnet18"), path) == (make_config(data="x", model="resnet18"),
                                                                              None)


@pytest.mark.slow  # a second full ranking, through the CLI
def test_cli_rank_prints_the_table_and_writes_rank_json(colors, tmp_path):
    proc = run_cli("rank", "--data", colors, "--models", ",".join(MODELS), "--image-size", SMALL["image_size"],
                   "--epochs", 1, "--batch-size", 4, "--out", tmp_path / "r", "--quiet")
    assert proc.returncode == 0, proc.stderr
    saved = Ranking.read(tmp_path / "r" / "rank.json")
    assert saved.picked in proc.stdout and "PROBE_ACC" in proc.stdout
    assert json.loads(proc.stdout.strip().splitlines()[-1])["picked"] == saved.picked


def test_cli_rank_bad_budget_is_one_line(colors):
    proc = run_cli("rank", "--data", colors, "--budget", "-3")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--budget" in proc.stderr


@pytest.mark.slow  # a ranking and two fine-tunes through the CLI
def test_train_model_auto_records_the_ranking(colors, tmp_path, monkeypatch):
    import transferlab.ranking.ranker as rank_module

    real = rank_module.rank
    monkeypatch.setattr(rank_module, "rank", lambda *a, **k: real(*a, models=MODELS, **k))
    out = tmp_path / "run"
    proc = run_cli("train", "--data", colors, "--model", "auto", "--image-size", SMALL["image_size"], "--epochs", 1,
                   "--batch-size", 4, "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / rundir.CONFIG).read_text())
    metrics = json.loads((out / rundir.METRICS).read_text())
    assert config["model"] in MODELS and metrics["ranking"]["picked"] == config["model"]
    # no --time-limit: the run planned against the time the reference's run would take, and says so
    assert config["time_limit"] == metrics["ranking"]["limit_s"] == metrics["time_limit"]["limit_s"]
    assert metrics["time_limit"]["limit_why"] == "what mobilenet_v2's 1 epoch would take here"
    assert Ranking.read(out / rundir.RANKING).picked == config["model"]
    report = (out / rundir.REPORT).read_text()
    assert "Backbone ranking" in report and "what mobilenet_v2&#x27;s 1 epoch would take here" in report
    with run_reports_off():  # the first run's report was read above
        again = run_cli("train", "--data", colors, "--model", "auto", "--image-size", SMALL["image_size"],
                        "--epochs", 1, "--batch-size", 4, "--out", out, "--quiet", "--overwrite")
    assert again.returncode == 0, again.stderr


@pytest.mark.slow  # a ranking and two fine-tunes
def test_compare_scratch_with_auto_ranks_once_for_both_arms(colors, tmp_path, monkeypatch, no_run_reports):
    import transferlab.ranking.ranker as rank_module
    from transferlab.workflows.compare import compare_scratch

    calls = []
    real = rank_module.rank
    monkeypatch.setattr(rank_module, "rank", lambda *a, **k: calls.append(1) or real(*a, models=MODELS, **k))
    results = compare_scratch(make_config(data=str(colors), model="auto", **SMALL), tmp_path / "demo", quiet=True)
    assert len(calls) == 1
    picked = Ranking.read(tmp_path / "demo" / "rank.json").picked
    for arm in results.values():
        assert arm.config.model == picked and arm.metrics["ranking"]["picked"] == picked


@pytest.mark.slow  # a ranking and a study of two fine-tunes, twice
def test_a_study_with_auto_ranks_once_and_records_it_in_every_run(colors, tmp_path, monkeypatch, no_run_reports):
    import transferlab.ranking.ranker as rank_module
    from transferlab.workflows import study as experiments
    from transferlab.workflows.study_spec import study_from_dict

    calls = []
    real = rank_module.rank
    monkeypatch.setattr(rank_module, "rank", lambda *a, **k: calls.append(1) or real(*a, models=MODELS, **k))
    study = study_from_dict({"name": "tiny", "variants": {"finetune": {}, "probe": {"freeze": "body"}}}, "tiny.yaml")
    out = tmp_path / "study"
    experiments.run_study(study, make_config(data=str(colors), model="auto", **SMALL), out, [0], quiet=True)
    experiments.run_study(study, make_config(data=str(colors), model="auto", **SMALL), out, [0], quiet=True)
    assert len(calls) == 1  # the second invocation reuses out/rank.json (and skips the finished runs)
    picked = Ranking.read(out / "rank.json").picked
    for variant in ("finetune", "probe"):
        metrics = json.loads((out / variant / "seed0" / rundir.METRICS).read_text())
        assert metrics["ranking"]["picked"] == picked
        assert json.loads((out / variant / "seed0" / rundir.CONFIG).read_text())["model"] == picked


def test_the_demo_says_whether_fine_tune_and_scratch_separate():
    """Fine-tune minus scratch, paired over the same test images: 90 vs 60 of 100 separates, 61 vs 60 does not."""
    from transferlab.train.result import RunResult
    from transferlab.workflows.compare import comparison_note

    def arm(right: int) -> RunResult:
        rows = [{"path": f"{i}.png", "label": "ab"[i % 2], "correct": int(i < right)} for i in range(100)]
        metrics = {"test": {"baseline": {"class": "a", "accuracy": 0.5}}}
        return RunResult(run_dir=None, config=make_config(data="d"), classes=("a", "b"), metrics=metrics,
                         predictions=rows)

    apart = comparison_note({"finetune": arm(90), "scratch": arm(60)})
    assert apart.startswith("fine-tune minus scratch: +30.0 points") and "the interval separates the two" in apart
    assert "always answering a would score 0.5000" in apart
    close = comparison_note({"finetune": arm(61), "scratch": arm(60)})
    assert "+1.0 points" in close and "does not separate" in close
    assert comparison_note({"finetune": arm(61)}) is None

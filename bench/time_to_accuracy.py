"""Time-to-accuracy of transferlab against a plain PyTorch fine-tuning loop, on the same machine.

    python bench/time_to_accuracy.py --data elpv
    python bench/time_to_accuracy.py --data ../shared/datasets/hotdog-mini --repeats 3

Each arm runs in its own subprocess (one process tree, arms alternating when
--repeats > 1); the reference runs with default settings, as users run it:

- reference: torchvision ImageFolder + DataLoader(num_workers=0) + per-image PIL transforms,
  NCHW fp32, plain SGD with the seed's hyper-parameters (body lr 5e-5, head x10, wd 1e-3,
  summed loss, batch 128), 5 epochs, evaluation after every epoch;
- transferlab: the default preset through ``transferlab.finetune``;
- frozen body: the same plain loop with the whole body frozen (it still runs the body
  every step) against transferlab's linear probe (``freeze="body"``): cold (the body runs
  once per image, ``feature_cache=False``) and cached (a second run that reads the body
  features the first one left on disk);
- pipeline: transferlab's training images/s with its data pipeline against the same model
  stepping on pre-made tensors.

Every arm starts its clock after importing torch and torchvision, which all of them need
(about 2 s on a 2-core machine, most of it torchvision importing torch._dynamo), so the
ratios compare the runs themselves; transferlab's own import is inside its clock. The
frozen-body ratio, whose runs are short, is also printed with those imports counted.

The time to the reference's final accuracy counts every model transferlab has saved: the head
warm-up's (saved at once since anytime runs) and each epoch's; ``..._epochs_only`` counts the
epochs alone, as before. Prints a table and one JSON line. Ratios and medians, not single
absolute times, are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _harness as harness

REFERENCE_EPOCHS = 5


# --------------------------------------------------------------------------- arms (run in subprocesses)


def _start_clock() -> tuple[float, float]:
    """Import torch and torchvision, then start the clock: (start, seconds the imports took)."""
    before = time.perf_counter()
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    start = time.perf_counter()
    return start, start - before


def _reference_model(num_classes: int):
    import torch
    import torchvision

    from transferlab.models.weights import resolve_weights

    net = torchvision.models.mobilenet_v2()
    net.load_state_dict(torch.load(resolve_weights("mobilenet_v2", "imagenet").path, weights_only=True))
    net.classifier[1] = torch.nn.Linear(net.classifier[1].in_features, num_classes)
    torch.nn.init.xavier_uniform_(net.classifier[1].weight)
    torch.nn.init.zeros_(net.classifier[1].bias)
    return net


def arm_reference(data: str, frozen: bool, seed: int) -> dict:
    """The seed's recipe as a plain loop; ``frozen`` freezes the body but still runs it every step."""
    start, import_s = _start_clock()
    import torch
    import torchvision
    from torchvision import transforms

    from transferlab.data.datasets import resolve_data

    torch.manual_seed(seed)
    ds = resolve_data(data, seed=seed)
    test_dir = "val" if ds.test_source == "val" else "test"
    normalize = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train_tf = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    test_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                  normalize])
    rgb = lambda path: torchvision.datasets.folder.default_loader(path)  # noqa: E731
    train_set = torchvision.datasets.ImageFolder(str(ds.root / "train"), train_tf, loader=rgb)
    test_set = torchvision.datasets.ImageFolder(str(ds.root / test_dir), test_tf, loader=rgb)
    train_iter = torch.utils.data.DataLoader(train_set, batch_size=128, shuffle=True, num_workers=0)
    test_iter = torch.utils.data.DataLoader(test_set, batch_size=128, num_workers=0)
    net = _reference_model(len(train_set.classes))
    head = list(net.classifier[1].parameters())
    body = [p for n, p in net.named_parameters() if not n.startswith("classifier.1")]
    if frozen:
        for p in body:
            p.requires_grad_(False)
        groups = [{"params": head, "lr": 5e-4}]
    else:
        groups = [{"params": body}, {"params": head, "lr": 5e-4}]
    trainer = torch.optim.SGD(groups, lr=5e-5, weight_decay=1e-3)
    loss = torch.nn.CrossEntropyLoss(reduction="none")
    history = []
    for epoch in range(REFERENCE_EPOCHS):
        net.train()
        if frozen:
            net.features.eval()  # frozen BatchNorm keeps its statistics
        for x, y in train_iter:
            trainer.zero_grad()
            loss(net(x), y).sum().backward()
            trainer.step()
        net.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in test_iter:
                correct += int((net(x).argmax(1) == y).sum())
                total += len(y)
        history.append({"epoch": epoch + 1, "test_acc": correct / total, "wall_s": time.perf_counter() - start})
    return {"history": history, "wall_s": time.perf_counter() - start, "import_s": import_s,
            "final_acc": history[-1]["test_acc"]}


def arm_transferlab(data: str, probe: bool, seed: int, extra: dict, feature_cache: bool = False) -> dict:
    start, import_s = _start_clock()
    from transferlab import finetune, make_config

    overrides = {"freeze": "body", "epochs": REFERENCE_EPOCHS, "feature_cache": feature_cache} if probe else {}
    result = finetune(make_config(data=data, seed=seed, **{**overrides, **extra}), quiet=True)
    wall_s = time.perf_counter() - start
    before_trainer = wall_s - result.metrics["wall_s"]  # the history's clock starts with the Trainer
    history = [{**h, "wall_s": h["wall_s"] + before_trainer} for h in result.history]
    # the first saved model: the head warm-up, scored on the same split as the epochs (a measurement, not a choice)
    first = [{"stage": "head_warmup", "test_acc": r["test_acc"], "wall_s": r["wall_s"] + before_trainer}
             for r in result.stages if r.get("stage") == "head_warmup" and "test_acc" in r]
    return {"history": history, "first_model": first, "wall_s": wall_s, "import_s": import_s,
            "final_acc": result.test_acc, "config": result.config.to_dict()}


def arm_pipeline(data: str, seed: int, rounds: int = 5) -> dict:
    """Images/s of full training epochs against the same steps on pre-made tensors, alternating."""
    import math

    import torch
    from torch import nn

    from transferlab import make_config
    from transferlab.data.batches import prefetch_batches, train_batches
    from transferlab.data.transforms import normalize
    from transferlab.inference.forward import use_bf16
    from transferlab.train.loop import Step, train_one_epoch
    from transferlab.train.optim import build_optimizer, build_scheduler
    from transferlab.train.trainer import Trainer

    trainer = Trainer(make_config(data=data, seed=seed), quiet=True)
    cfg, pre = trainer.config, trainer.train_pre
    model = trainer.prepare()
    data = trainer.data
    n = len(data.train_labels)
    steps = math.ceil(n / cfg.batch_size)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_scheduler(cfg, optimizer, steps)
    loss_fn = nn.CrossEntropyLoss(reduction="none", label_smoothing=cfg.label_smoothing)
    # the same epoch's batches, made (cropped and normalised) before the clock starts
    premade = [(normalize(b[0], pre, trainer.device), b[1])
               for b in train_batches(data.train_images, data.train_labels, cfg.batch_size, pre,
                                      cfg.crop_scale, seed, 0)]
    bf16 = use_bf16(trainer.device, cfg.precision)

    def bare_epoch() -> float:
        model.train()
        t = time.perf_counter()
        for x, y in premade:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):  # as the full loop
                logits = model(x)
            loss = loss_fn(logits.float(), y).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return n / (time.perf_counter() - t)

    bare_epoch()  # warm-up: oneDNN builds its kernels on the first calls
    full, bare = [], []
    for r in range(rounds):
        batches = train_batches(data.train_images, data.train_labels, cfg.batch_size, pre, cfg.crop_scale,
                                seed, r + 1, prefetch=prefetch_batches(trainer.device))
        stats = train_one_epoch(model, batches, steps, Step(optimizer, scheduler, loss_fn, pre, trainer.device),
                                quiet=True)
        full.append(n / stats["train_s"])
        bare.append(bare_epoch())
    return {"pipeline_img_s": harness.median(full), "tensors_img_s": harness.median(bare),
            "efficiency": harness.ratio(harness.median(full), harness.median(bare)), "crop": pre.crop_size,
            "batch_size": cfg.batch_size, "bf16": bf16}


# --------------------------------------------------------------------------- driver


def run_arm(name: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "arm.json"
        cmd = [sys.executable, __file__, "--arm", name, "--data", args.data, "--seed", str(args.seed),
               "--arm-out", str(out), "--extra", json.dumps(args.extra)]
        env = dict(os.environ)
        if name.startswith("reference"):
            env.pop("THP_MEM_ALLOC_ENABLE", None)  # the reference runs as users run it
        subprocess.run(cmd, check=True, env=env)
        return json.loads(out.read_text())


def time_to(history: list[dict], target: float) -> float | None:
    return next((h["wall_s"] for h in history if h["test_acc"] >= target - 1e-9), None)


def main() -> None:
    parser = harness.parser(__doc__)
    harness.add_data(parser, "elpv")
    parser.add_argument("--repeats", type=int, default=1)
    harness.add_seed(parser)
    parser.add_argument("--extra", type=json.loads, default={}, help="JSON overrides of transferlab's config")
    parser.add_argument("--skip", default="", help="comma-separated arms to skip: frozen,pipeline")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--arm-out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.arm:
        arms = {"reference": lambda: arm_reference(args.data, False, args.seed),
                "reference-frozen": lambda: arm_reference(args.data, True, args.seed),
                "transferlab": lambda: arm_transferlab(args.data, False, args.seed, args.extra),
                "transferlab-probe": lambda: arm_transferlab(args.data, True, args.seed, {}),
                "transferlab-probe-cached": lambda: arm_transferlab(args.data, True, args.seed, {}, True),
                "pipeline": lambda: arm_pipeline(args.data, args.seed)}
        Path(args.arm_out).write_text(json.dumps(arms[args.arm]()))
        return

    skip = set(filter(None, args.skip.split(",")))
    rounds = []
    for _ in range(args.repeats):
        r = {"reference": run_arm("reference", args), "transferlab": run_arm("transferlab", args)}
        if "frozen" not in skip:
            r["reference-frozen"] = run_arm("reference-frozen", args)
            r["transferlab-probe"] = run_arm("transferlab-probe", args)
            run_arm("transferlab-probe-cached", args)  # leaves the features on disk (if not there already)
            r["transferlab-probe-cached"] = run_arm("transferlab-probe-cached", args)
        rounds.append(r)
    pipeline = None if "pipeline" in skip else run_arm("pipeline", args)

    def median(arm: str, key: str, digits: int | None) -> float:
        return harness.median((r[arm][key] for r in rounds), digits)

    ref_wall = median("reference", "wall_s", None)
    def to_reference(stages: str) -> float | None:
        """Median seconds until transferlab has a model as good as the reference's final one; the saved models
        counted: ``epochs`` only (as before anytime runs), or ``any`` (the head warm-up's saved model too)."""
        reach = [time_to(r["transferlab"].get("first_model", []) * (stages == "any") + r["transferlab"]["history"],
                         r["reference"]["final_acc"]) for r in rounds]
        reached = [t for t in reach if t is not None]
        return harness.median(reached) if len(reached) == len(reach) else None

    tl_to_acc, tl_epochs_to_acc = to_reference("any"), to_reference("epochs")
    def frozen_ratio(arm: str, imports: bool = False) -> float:
        def seconds(result: dict) -> float:
            return result["wall_s"] + (result["import_s"] if imports else 0.0)

        return harness.median((seconds(r["reference-frozen"]) / seconds(r[arm]) for r in rounds), 2)

    summary = {
        "data": args.data, "repeats": args.repeats, "cpu_threads": os.cpu_count(),
        "reference_final_acc": median("reference", "final_acc", 4), "reference_wall_s": round(ref_wall, 1),
        "transferlab_final_acc": median("transferlab", "final_acc", 4),
        "transferlab_wall_s": median("transferlab", "wall_s", 1),
        "transferlab_s_to_reference_acc": round(tl_to_acc, 1) if tl_to_acc else None,
        "time_to_accuracy_ratio": harness.ratio(ref_wall, tl_to_acc, 2),
        "transferlab_s_to_reference_acc_epochs_only": round(tl_epochs_to_acc, 1) if tl_epochs_to_acc else None,
        "time_to_accuracy_ratio_epochs_only": harness.ratio(ref_wall, tl_epochs_to_acc, 2),
        "pipeline_efficiency": round(pipeline["efficiency"], 3) if pipeline else None,
        "frozen_body_ratio": frozen_ratio("transferlab-probe") if "frozen" not in skip else None,
        "frozen_body_ratio_cached": frozen_ratio("transferlab-probe-cached") if "frozen" not in skip else None,
    }
    if "frozen" not in skip:
        summary["reference_frozen_wall_s"] = median("reference-frozen", "wall_s", 1)
        summary["probe_wall_s"] = median("transferlab-probe", "wall_s", 1)
        summary["probe_cached_wall_s"] = median("transferlab-probe-cached", "wall_s", 1)
        summary["probe_final_acc"] = median("transferlab-probe", "final_acc", 4)
        summary["frozen_body_ratio_with_imports"] = frozen_ratio("transferlab-probe", imports=True)
        summary["import_torch_torchvision_s"] = median("reference-frozen", "import_s", 2)
    if pipeline:
        summary.update({k: round(v, 2) if isinstance(v, float) else v for k, v in pipeline.items()
                        if k != "efficiency"})
    curves = [f"round {i} {name:<12} " + " ".join(f"{h['test_acc']:.3f}@{h['wall_s']:.0f}s"
                                                  for h in r[name].get("first_model", []) + r[name]["history"])
              for i, r in enumerate(rounds) for name in ("reference", "transferlab")]
    harness.report("time_to_accuracy", summary, harness.pairs(summary), *curves)


if __name__ == "__main__":
    main()

"""Several processes (torchrun, gloo on CPU) train like one process with the same global batch."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import make_folder, run_cli, run_reports_off
from safetensors.torch import load_file

from transferlab.rundir import RunDir

pytestmark = pytest.mark.slow  # torchrun starts real processes

# One thread per process: OpenMP threads spinning on two busy cores slow everything down.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TRANSFERLAB = [sys.executable, "-m", "transferlab"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(nproc: int, *args: object) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *map(str, args)]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)


BN_CHECK = """
import sys
import torch, torch.distributed as dist
from torch import nn
from transferlab.train.distributed import GlobalBatchNorm
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
x = torch.randn(8, 4, 5, 5, dtype=torch.float64) * 3 + 2
upstream = torch.randn_like(x)
ref = nn.BatchNorm2d(4, momentum=0.3).double()
with torch.no_grad():
    ref.weight.uniform_(0.5, 1.5)
    ref.bias.uniform_(-1, 1)
mine = GlobalBatchNorm(4, momentum=0.3).double()
mine.load_state_dict(ref.state_dict())
rows = [slice(0, 5), slice(5, 8)][rank]  # unequal shares
whole = x.clone().requires_grad_()
want = ref(whole)
(want * upstream).sum().backward()
part = x[rows].clone().requires_grad_()
got = mine(part)
(got * upstream[rows]).sum().backward()
for p in mine.parameters():
    dist.all_reduce(p.grad)  # what DistributedDataParallel does
pairs = {"output": (got, want[rows]), "input grad": (part.grad, whole.grad[rows]),
         "weight grad": (mine.weight.grad, ref.weight.grad), "bias grad": (mine.bias.grad, ref.bias.grad),
         "running mean": (mine.running_mean, ref.running_mean), "running var": (mine.running_var, ref.running_var)}
for name, (a, b) in pairs.items():
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), (name, (a - b).abs().max().item())
mine.eval()
ref.eval()
assert torch.allclose(mine(x), ref(x), rtol=1e-10, atol=1e-12)
sys.stdout.write(f"rank {rank} ok\\n")  # one write: lines of the two ranks cannot interleave
sys.stdout.flush()
"""


def test_global_batchnorm_equals_batchnorm_over_the_whole_batch(tmp_path):
    script = tmp_path / "bn_check.py"
    script.write_text(BN_CHECK)
    proc = run(torchrun(2, script))
    assert proc.returncode == 0, proc.stderr
    assert sorted(line for line in proc.stdout.split("\n") if line.endswith(" ok")) == ["rank 0 ok", "rank 1 ok"]


def test_two_processes_reach_the_weights_of_one(tmp_path):
    """Same math, other summation order: equal up to float rounding.

    BatchNorm frozen (eval mode), no dropout and fp32, so the test sees the gradient
    average, data sharding and reductions alone; 15 images in global batches of 6
    make the last batch split 2 + 1.
    """
    data = make_folder(tmp_path / "colors", {"train": 5, "val": 2},
                       classes={"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)})
    args = ["train", "--data", data, "--model", "resnet18", "--weights", "none", "--freeze", "layer4",
            "--image-size", "64", "--batch-size", "6", "--epochs", "2", "--precision", "fp32", "--quiet"]
    with run_reports_off():
        one = run_cli(*args, "--out", tmp_path / "one")  # the reference: one process, this one
    assert one.returncode == 0, one.stderr
    two = run(torchrun(2, "-m", "transferlab", *args, "--out", tmp_path / "two"))
    assert two.returncode == 0, two.stderr
    printed = two.stdout.strip().splitlines()  # rank 0 alone prints the run's end: test, model, next
    assert [line.split(" ")[0] for line in printed] == ["test", "model:", "next:"] and "Traceback" not in two.stderr

    want, got = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert want.keys() == got.keys()
    for name in want:
        assert torch.allclose(want[name], got[name], rtol=1e-5, atol=1e-6), name
    assert not torch.equal(want["fc.weight"], untrained_head(tmp_path)), "the head did not train"
    rows = [RunDir(tmp_path / run_).history() for run_ in ("one", "two")]
    for a, b in zip(*rows):
        assert a["test_acc"] == b["test_acc"] and a["train_acc"] == b["train_acc"]
        # rounded to 4 decimals: the sum over two processes may land on the other side of a rounding step
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1.5e-4)
        assert a["test_loss"] == pytest.approx(b["test_loss"], abs=1.5e-4)
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["processes"] == 2


def untrained_head(tmp_path: Path) -> torch.Tensor:
    """The head resnet18 starts from with seed 0 (what an untrained run would save)."""
    from transferlab.models.model import create_model

    torch.manual_seed(0)
    return create_model("resnet18", 3).net.fc.weight.detach()


def test_nproc_launches_torchrun_and_sigterm_checkpoints(tmp_path):
    data = make_folder(tmp_path / "colors", {"train": 8, "val": 4})
    out = tmp_path / "run"
    bad = run_cli("train", "--data", data, "--nproc", 2, "--batch-size", 5, "--out", out)  # refused before launching
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "transferlab: error: --batch-size 5 is the global batch and must be divisible by the 2 processes; "
        "use e.g. --batch-size 6"]

    # mobilenet_v2 as it comes: its BatchNorm layers train over the global batch
    args = ["train", "--data", str(data), "--model", "mobilenet_v2", "--image-size", "64", "--batch-size", "4",
            "--epochs", "2", "--checkpoint-every", "1", "--nproc", "2", "--quiet", "--out", str(out)]
    proc = subprocess.Popen([*TRANSFERLAB, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # to the launcher, as a scheduler would; torchrun passes it on
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("transferlab: interrupted by SIGTERM"), err
    assert lines[0].endswith(f"resume with: transferlab train --nproc 2 --out {out} --resume")
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and not (out / "metrics.json").exists()

    done = run([*TRANSFERLAB, "train", "--nproc", "2", "--out", str(out), "--resume", "--quiet"])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()  # the test scores, the model kept, the next commands
    assert len(lines) == 3 and lines[0].startswith("test (") and lines[2].startswith("next: "), done.stdout
    assert [row["epoch"] for row in RunDir(out).history()] == [1, 2]
    assert (out / "model.safetensors").exists() and not (out / "checkpoint.pt").exists()

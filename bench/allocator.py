"""Training-step throughput with and without transparent huge pages for CPU tensors.

    python bench/allocator.py --steps 6 --repeats 3

Runs the same MobileNetV2 training steps (batch 32, 224 px, channels-last) in fresh
subprocesses with THP_MEM_ALLOC_ENABLE=0 and =1, alternating, and prints the medians,
their ratio and one JSON line. transferlab does not set the variable: measured on 2 cores it cut
page faults 10x without making the step faster (README, "Speed").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import _harness as harness

STEP = """
import json, resource, time, torch, torchvision
torch.manual_seed(0)
m = torchvision.models.mobilenet_v2(num_classes=2).to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
x = torch.randn(32, 3, 224, 224).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 2, (32,))
def step():
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(m(x), y).backward()
    opt.step()
step()
t = time.perf_counter()
for _ in range({steps}):
    step()
dt = time.perf_counter() - t
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps({{"img_s": {steps} * 32 / dt, "minor_faults": faults}}))
"""


def run(thp: str, steps: int) -> dict:
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": thp}
    out = subprocess.run([sys.executable, "-c", STEP.format(steps=steps)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"0": [], "1": []}
    for _ in range(args.repeats):
        for thp in ("0", "1"):
            results[thp].append(run(thp, args.steps))
    summary = {f"thp{k}_img_s": harness.median((r["img_s"] for r in v), 2) for k, v in results.items()}
    summary.update({f"thp{k}_minor_faults": int(harness.median(r["minor_faults"] for r in v))
                    for k, v in results.items()})
    summary["speedup"] = harness.ratio(summary["thp1_img_s"], summary["thp0_img_s"], 3)
    harness.report("allocator", summary, harness.pairs(summary))


if __name__ == "__main__":
    main()

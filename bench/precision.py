"""Training-step throughput in fp32 against bf16 autocast on this machine's CPU.

    python bench/precision.py --sizes 224 160 --repeats 5

The same MobileNetV2 training steps (batch 32, channels-last, AdamW), variants
alternating in one process after a warm-up step each; prints images/s (median over
repeats), the bf16/fp32 ratio per crop size and one JSON line. ``precision="auto"``
uses bf16 on CPUs with AMX (``transferlab.inference.forward.cpu_has_amx``).
"""

from __future__ import annotations

import time

import _harness as harness


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 160])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    from transferlab.inference.forward import cpu_has_amx
    from transferlab.models.model import create_model

    torch.manual_seed(0)
    model = create_model(args.model, 2).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(x: torch.Tensor, y: torch.Tensor, bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    rows = []
    for size in args.sizes:
        x = torch.randn(args.batch_size, 3, size, size).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 2, (args.batch_size,))
        times: dict[bool, list[float]] = {False: [], True: []}
        for bf16 in times:
            step(x, y, bf16)
        for _ in range(args.repeats):
            for bf16 in times:
                start = time.perf_counter()
                step(x, y, bf16)
                times[bf16].append(time.perf_counter() - start)
        fp32, bf16 = (args.batch_size / harness.median(times[k]) for k in (False, True))
        rows.append({"size": size, "fp32_img_s": round(fp32, 1), "bf16_img_s": round(bf16, 1),
                     "bf16_ratio": harness.ratio(bf16, fp32, 2)})
    columns = [("size", "size"), ("fp32 img/s", "fp32_img_s"), ("bf16 img/s", "bf16_img_s"),
               ("bf16/fp32", "bf16_ratio")]
    harness.report("precision", {"model": args.model, "batch_size": args.batch_size,
                                 "threads": torch.get_num_threads(), "amx": cpu_has_amx(), "rows": rows},
                   harness.table(rows, columns, title=f"{args.model} training step, batch {args.batch_size}, "
                                 f"{torch.get_num_threads()} threads, AMX: {cpu_has_amx()}"))


if __name__ == "__main__":
    main()

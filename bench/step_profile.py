"""Where the stage-1 step's time goes: `torch.profiler`'s top operators for ours' step of the `stage1-step` case
(the `small` preset, cached VAE moments, no checkpointing), the step the roofline case divides its FLOPs by.

    python -m bench.step_profile [--device cpu|cuda] [--batch-size 8] [--steps 3] [--rows 15] [--json OUT]

Per operator: its own time per step (children excluded), its share of the profiled time and its calls per step; also
the step's wall time (median of the unprofiled steps before) and its counted FLOPs, so that the achieved rate can be
set beside the operators that take it.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.profiler import ProfilerActivity, profile

from bench.harness import interleaved, synchronize
from bench.stage1_step import _steps
from vlv.train.flops import step_flops


def top_operators(step, *, steps: int, rows: int, device: str) -> dict:
    """Profile `steps` calls of `step`; the `rows` operators with the most self time, per step."""
    cuda = torch.device(device).type == "cuda"
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(steps):
            step()
        synchronize(device)

    def self_us(event) -> float:
        return event.self_device_time_total if cuda else event.self_cpu_time_total

    events = [e for e in prof.key_averages() if self_us(e) > 0]
    total = sum(self_us(e) for e in events)
    events.sort(key=self_us, reverse=True)
    return {
        "clock": "device" if cuda else "cpu",
        "profiled_ms_per_step": total / 1e3 / steps,
        "operators": [
            {
                "name": e.key,
                "ms_per_step": self_us(e) / 1e3 / steps,
                "share": self_us(e) / total,
                "calls": e.count / steps,
            }
            for e in events[:rows]
        ],
    }


def run(device: str = "cpu", *, batch_size: int = 8, steps: int = 3, rows: int = 15) -> dict:
    case = _steps(device, batch_size)
    ours = case["ours"]
    seconds = interleaved({"ours": ours}, repeats=5, device=device)["ours"]["median"]  # after a warm-up step
    flops = step_flops(case["composition"], case["batch"])
    return {
        "device": device,
        "batch_size": batch_size,
        "step_seconds": seconds,
        "step_flops": flops,
        "achieved_flops_per_s": flops / seconds,
        **top_operators(ours, steps=steps, rows=rows, device=device),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="profiled steps (after a warm-up and 5 timed ones)")
    p.add_argument("--rows", type=int, default=15, help="operators to list")
    p.add_argument("--json", default=None, help="also write the result to this file")
    args = p.parse_args()
    result = run(args.device, batch_size=args.batch_size, steps=args.steps, rows=args.rows)
    print(
        f"step {result['step_seconds'] * 1e3:.0f} ms (median of 5), {result['step_flops'] / 1e9:.1f} GFLOP counted, "
        f"{result['achieved_flops_per_s'] / 1e9:.1f} GFLOP/s; profiled {result['profiled_ms_per_step']:.0f} ms per step"
    )
    print(f"{'operator':58s} {'ms/step':>8s} {'share':>6s} {'calls':>7s}")
    for op in result["operators"]:
        print(f"{op['name'][:58]:58s} {op['ms_per_step']:8.1f} {op['share']:6.1%} {op['calls']:7.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

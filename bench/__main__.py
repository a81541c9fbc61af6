"""`python -m bench [--device cpu|cuda] [--json OUT] [--case NAME ...]`: performance, as ratios measured in one run.

Cases (default: all but the long one): stage1-step (with memory and the roofline), stage2-step, captioning,
reconstruction; `--case stage1-efficiency` runs the long compute-efficiency comparison alone (hours).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_CASES = ("stage1-step", "stage2-step", "captioning", "reconstruction")


def _caption_model(path: str | None, device: str):
    """A trained shapes captioner: the given folder, the demo's (runs/demo/model), or stage 2 trained here (≈ 5 min
    on 2 cores) from the committed stage-1 encoder."""
    import vlv
    from vlv.model import VLV
    from vlv.shapes import preset
    from vlv.shapes.demo import DemoConfig, demo_pairs, run_stage2

    for candidate in (path, "runs/demo/model"):
        if candidate and Path(candidate, "config.json").is_file():
            return vlv.load(candidate, device=device)
    if path:
        raise FileNotFoundError(f"no VLV checkpoint at {path}")
    cfg = DemoConfig.full()
    model = VLV.from_pretrained(preset.ENCODER, teacher=preset.TEACHER)
    run_stage2(model, cfg.stage2(), demo_pairs(cfg), cfg.seed)
    return model.to(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", default=None, help="write the results to this file")
    p.add_argument("--case", nargs="*", default=list(DEFAULT_CASES), choices=[*DEFAULT_CASES, "stage1-efficiency"],
                   help="cases to run (default: all but stage1-efficiency)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of each case after a warm-up")
    p.add_argument("--compile", action="store_true",
                   help="stage1-step: also time ours with its networks compiled (minutes of compiling)")  # fmt: skip
    p.add_argument("--caption-model", default=None, help="a trained shapes captioner (default: runs/demo/model)")
    p.add_argument("--work", default="runs/bench/stage1_efficiency",
                   help="stage1-efficiency: where its runs keep their state (a stopped case continues)")  # fmt: skip
    p.add_argument("--runs", nargs="*", default=None,
                   help="stage1-efficiency: measure these runs only (demo, ours, open_init_only, former_ours, "
                        "former_ours_ema0.95, ours_ema0.99, ours_lr1e-3, ours_4_noises, ours_1_noise, "
                        "paper_lr0.0001, paper_lr0.0003, paper_lr0.001)")  # fmt: skip
    seeding = p.add_mutually_exclusive_group()
    seeding.add_argument("--seed", type=int, default=0,
                         help="stage1-efficiency: the seed of every run's init, renders and noise")  # fmt: skip
    seeding.add_argument("--seeds", nargs="+", type=int, default=None,
                         help="stage1-efficiency: several seeds, each in --work with {seed} replaced; the "
                              "comparisons pooled over them (summed FLOPs; median, geometric mean, minimum of the "
                              "ratios)")  # fmt: skip
    p.add_argument("--stop-after", type=int, default=None,
                   help="stage1-efficiency: leave each run at this step (a later call continues it)")  # fmt: skip
    args = p.parse_args(argv)

    import torch

    from bench import harness

    start = time.perf_counter()
    results: dict = {"machine": harness.machine(args.device)}
    if "stage1-step" in args.case:
        from bench import stage1_step

        step = stage1_step.run(args.device, repeats=args.repeats, compile=args.compile)
        results.update({k: step[k] for k in ("stage1_step", "memory", "stage1_step_compiled") if k in step})
        # the step's own dtype: bf16 under autocast on a GPU, fp32 on the CPU
        dtype = torch.bfloat16 if torch.device(args.device).type == "cuda" else torch.float32
        matmul = harness.matmul_flops_per_second(args.device, dtype)
        achieved = step["stage1_step_flops"] / step["stage1_step_seconds"]
        results["roofline"] = {
            "flops_per_step": step["stage1_step_flops"],
            "achieved_flops_per_s": achieved,
            "matmul_flops_per_s": matmul,
            "fraction": achieved / matmul,
            "dtype": str(dtype).removeprefix("torch."),
        }
    if "stage2-step" in args.case:
        from bench import stage2_step

        results.update(stage2_step.run(args.device, repeats=args.repeats))
    if "captioning" in args.case:
        from bench import captioning

        model = _caption_model(args.caption_model, args.device)
        results.update(captioning.run(model, args.device, repeats=args.repeats))
    if "reconstruction" in args.case:
        from bench import reconstruction
        from vlv.model import VLV
        from vlv.shapes import preset
        from vlv.shapes.reader import load_reader

        model = VLV.from_pretrained(preset.ENCODER, teacher=preset.TEACHER)
        results.update(reconstruction.run(model, load_reader(preset.READER), args.device, repeats=args.repeats))
    if "stage1-efficiency" in args.case:
        from bench import stage1_efficiency

        runs = dict(device=args.device, names=args.runs, stop_after=args.stop_after)
        if args.seeds:
            results.update(stage1_efficiency.run_seeds(args.work, args.seeds, **runs))
        else:
            results.update(stage1_efficiency.run_case(Path(args.work), seed=args.seed, **runs))
    results["seconds"] = time.perf_counter() - start
    text = json.dumps(results, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

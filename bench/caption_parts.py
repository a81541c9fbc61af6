"""Where batching pays in captioning: `VLV.caption`'s time per part at batch 32 and at batch 2, on the same images.

    python -m bench.caption_parts [--caption-model DIR] [--images 64] [--repeats 3] [--json OUT]

The parts are timed with forward hooks on the model's own modules (nothing is re-implemented): the vision tower, BART's
encoder, BART's decoder, the teacher's text encoder (z → c), and the rest of the call — the caption decoder's
generation, with the projection of z and the glue. Per part: milliseconds for all the images (the fastest of the
repeats) at each batch size and their ratio, which is what batching alone buys in that part; also the process's
minor page faults per pass (Linux), i.e. the fresh memory each pass touches.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections import defaultdict

import torch

from vlv.model import VLV
from vlv.shapes.stage1 import renders
from vlv.shapes.world import sample_scenes


def parts(model: VLV) -> dict[str, torch.nn.Module]:
    florence = model.encoder.florence
    return {
        "vision tower": florence.vision_tower,
        "BART encoder": florence.language_model.encoder,
        "BART decoder": florence.language_model.decoder,
        "text encoder (z -> c)": model.conditioner,
    }


def timed_pass(model: VLV, pixels: torch.Tensor, batch: int) -> tuple[dict[str, float], int]:
    """Seconds per part for captioning `pixels` at `batch`, and the minor page faults of the pass."""
    seconds: dict[str, float] = defaultdict(float)
    started: dict[str, float] = {}

    def start(name: str):
        def hook(*_) -> None:
            started[name] = time.perf_counter()

        return hook

    def stop(name: str):
        def hook(*_) -> None:
            seconds[name] += time.perf_counter() - started[name]

        return hook

    hooks = []
    for name, module in parts(model).items():
        hooks += [module.register_forward_pre_hook(start(name)), module.register_forward_hook(stop(name))]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    begun = time.perf_counter()
    try:
        for i in range(0, len(pixels), batch):
            model.caption(pixels[i : i + batch])
    finally:
        for hook in hooks:
            hook.remove()
    total = time.perf_counter() - begun
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    seconds["generation and the rest"] = total - sum(seconds.values())
    seconds["total"] = total
    return dict(seconds), faults


def run(model: VLV, *, images: int = 64, batches: tuple[int, int] = (32, 2), repeats: int = 3) -> dict:
    model = model.eval()
    pixels = renders(sample_scenes(images, seed=7, split="heldout")).to(model.device)
    best: dict[int, dict[str, float]] = {}
    faults: dict[int, int] = {}
    for batch in batches:
        timed_pass(model, pixels, batch)  # warm-up
    for _ in range(repeats):
        for batch in batches:  # interleaved, as the bench's cases
            seconds, faults[batch] = timed_pass(model, pixels, batch)
            best[batch] = {k: min(v, best.get(batch, {}).get(k, float("inf"))) for k, v in seconds.items()}
    big, small = batches
    return {
        "images": images,
        "batches": list(batches),
        "ms": {part: {str(b): 1000 * best[b][part] for b in batches} for part in best[big]},
        "ratio": {part: best[small][part] / best[big][part] for part in best[big]},
        "minor_page_faults": {str(b): faults[b] for b in batches},
    }


def main(argv: list[str] | None = None) -> int:
    from bench.__main__ import _caption_model

    p = argparse.ArgumentParser(prog="python -m bench.caption_parts", description=__doc__.splitlines()[0])
    p.add_argument("--caption-model", default=None, help="a trained shapes captioner (default: runs/demo/model)")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="also write the result to this file")
    args = p.parse_args(argv)
    result = run(_caption_model(args.caption_model, "cpu"), images=args.images, repeats=args.repeats)
    big, small = result["batches"]
    print(f"{'part':<26}{f'batch {big} (ms)':>16}{f'batch {small} (ms)':>16}{'ratio':>8}")
    for part, ms in result["ms"].items():
        print(f"{part:<26}{ms[str(big)]:>16.1f}{ms[str(small)]:>16.1f}{result['ratio'][part]:>7.2f}x")
    print("minor page faults per pass:", result["minor_page_faults"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Stage-1 throughput with and without the latent cache, on the same images, in one run.

    python bench/latent_cache.py [--preset small] [--images 256] [--steps 30] [--json OUT]

Renders shapes scenes at the preset's image size into a folder, writes the latent cache (`vlv cache-latents`), then
trains stage 1 twice through `vlv train autoencoder` — from the folder and from the cache — and reports samples/s of
each (steps after the first log entry, so start-up and warm-up are left out) and their ratio. A pixel-space teacher
(the shapes preset) has no VAE to cache: there only the uncached figure is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from vlv.cli import main as vlv  # noqa: E402
from vlv.presets import preset  # noqa: E402
from vlv.shapes.world import render, sample_scenes  # noqa: E402


def samples_per_second(run: Path, batch_size: int) -> float:
    log = json.loads((run / "final" / "training.json").read_text())["log"]
    first, last = log[0], log[-1]  # time from the end of the first log interval to the end of the run
    return (last["step"] - first["step"]) * batch_size / (last["seconds"] - first["seconds"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    size = preset(args.preset).teacher.image_size
    vae = preset(args.preset).teacher.vae_arch is not None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        for i, scene in enumerate(sample_scenes(args.images, 0)):
            render(scene, size).save(tmp / "images" / f"{i:05d}.png")
        common = ["--preset", args.preset, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                  "--log-every", "5", "--save-every", str(10**9), "--num-workers", str(args.workers),
                  "--preview", "0"]  # fmt: skip
        result = {"preset": args.preset, "image_size": size, "steps": args.steps, "batch_size": args.batch_size}
        vlv(["train", "autoencoder", "--data", str(tmp / "images"), "--out", str(tmp / "images_run"), *common])
        result["images_samples_per_s"] = samples_per_second(tmp / "images_run", args.batch_size)
        if vae:
            start = time.perf_counter()
            vlv(["cache-latents", "--preset", args.preset, "--data", str(tmp / "images"), "--out", str(tmp / "cache")])
            result["cache_seconds"] = time.perf_counter() - start
            vlv(["train", "autoencoder", "--latents", str(tmp / "cache"), "--out", str(tmp / "cache_run"), *common])
            result["cached_samples_per_s"] = samples_per_second(tmp / "cache_run", args.batch_size)
            result["speedup"] = result["cached_samples_per_s"] / result["images_samples_per_s"]
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

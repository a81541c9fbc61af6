"""What does z carry along a stage-1 run? Linear probes from z to each quadrant's attributes (occupied, size, colour,
shape), fitted on training-split scenes and scored on held-out ones, at chosen steps of a run of the efficiency case.

    python -m bench.attribute_probe [--run ours] [--seed 0] [--steps 300 450 600 750] [--vision]
    python -m bench.attribute_probe --teacher

`--teacher` trains nothing: it asks what each attribute is worth to the frozen teacher at each noise level — the
denoising loss of held-out scenes with the true caption, with the empty prompt, and with the caption with every
object's shape (colour, size) changed to the next value, on the same noise, per band of 100 timesteps.

The run trains as `python -m bench --case stage1-efficiency` trains it (same recipe, seed, data), in this process;
at each step the probes read its EMA weights when it keeps one (what the case's probe reads). `--vision` also probes
the vision tower's output tokens at initialisation (what BART reads at step 0; on shapes the tower trains in stage 1)
and the raw pixels: an upper bound that needs no training.
Chance: occupied and size 0.5, colour 0.25, shape 0.33.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json

import torch
import torch.nn.functional as F

from bench.stage1_efficiency import _build, all_runs
from vlv.model import VLV
from vlv.shapes import preset
from vlv.shapes.reader import reading_of
from vlv.shapes.stage1 import renders
from vlv.shapes.world import COLORS, POSITIONS, SHAPES, SIZES, Scene, sample_scenes
from vlv.train.loop import Trainer

ATTRIBUTES = (("occupied", None), ("size", SIZES), ("color", COLORS), ("shape", SHAPES))
IGNORE = -100  # an empty quadrant has no size, colour or shape


def labels(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """attribute → (N, 4 quadrants) class indices (IGNORE where the quadrant is empty)."""
    out: dict[str, list[list[int]]] = {name: [] for name, _ in ATTRIBUTES}
    for scene in scenes:
        reading = reading_of(scene)
        for name, values in ATTRIBUTES:
            row = []
            for position in POSITIONS:
                obj = reading[position]
                if values is None:
                    row.append(int(obj is not None))
                else:
                    row.append(values.index(getattr(obj, name)) if obj is not None else IGNORE)
            out[name].append(row)
    return {name: torch.tensor(rows) for name, rows in out.items()}


def linear_probe(train: torch.Tensor, y_train: dict, test: torch.Tensor, y_test: dict, *, steps: int = 300) -> dict:
    """Per attribute, a linear classifier (4 quadrants × classes) on standardised features: held-out accuracy."""
    mean, std = train.mean(0), train.std(0) + 1e-6
    train, test = (train - mean) / std, (test - mean) / std
    accuracy = {}
    for name, values in ATTRIBUTES:
        n = 2 if values is None else len(values)
        weight = torch.zeros(train.shape[1], len(POSITIONS) * n, requires_grad=True)
        bias = torch.zeros(len(POSITIONS) * n, requires_grad=True)
        opt = torch.optim.Adam([weight, bias], lr=1e-2)
        for _ in range(steps):
            logits = (train @ weight + bias).view(-1, n)
            loss = F.cross_entropy(logits, y_train[name].reshape(-1), ignore_index=IGNORE)
            loss = loss + 1e-3 * weight.square().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            predicted = (test @ weight + bias).view(-1, len(POSITIONS), n).argmax(-1)
        known = y_test[name] != IGNORE
        accuracy[name] = (predicted[known] == y_test[name][known]).float().mean().item()
    return accuracy


@torch.no_grad()
def _batched(fn, images: torch.Tensor, batch: int = 250) -> torch.Tensor:
    """fn over `images` in batches, each output flattened to one row per image."""
    return torch.cat([fn(images[i : i + batch]).flatten(1) for i in range(0, len(images), batch)])


def embed(model, images: torch.Tensor) -> torch.Tensor:
    """z of every image, flattened: (N, 77 · z_dim)."""
    return _batched(model.encoder, images)


def vision_tokens(model, images: torch.Tensor) -> torch.Tensor:
    """The vision tower's output tokens for every image (its current weights), flattened."""
    return _batched(model.encoder.visual_tokens, images)


def _write_json(path: str | None, value) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(value, f, indent=2)


def swapped(scene: Scene, attribute: str) -> Scene:
    """The scene with every object's `attribute` changed to the next value of its list (a wrong, confident caption)."""
    values = dict(ATTRIBUTES)[attribute]
    return Scene(
        tuple(
            dataclasses.replace(o, **{attribute: values[(values.index(getattr(o, attribute)) + 1) % len(values)]})
            for o in scene.objects
        )
    )


@torch.no_grad()
def teacher_penalties(model, scenes: list[Scene], *, band: int = 100, noises: int = 4, seed: int = 0) -> list[dict]:
    """Per band of `band` timesteps (t at its middle): the teacher's mean denoising loss of `scenes` with the true
    caption, the empty prompt and each attribute swapped (`swapped`), every conditioning on the same noise."""
    captions = {"true": [s.caption for s in scenes], "empty": [""] * len(scenes)}
    captions |= {name: [swapped(s, name).caption for s in scenes] for name, values in ATTRIBUTES if values}
    conditions = {name: model.conditioner.encode_prompts(texts) for name, texts in captions.items()}
    latents = model.decoder.encode_images(renders(scenes).to(model.device))
    generator = torch.Generator(latents.device).manual_seed(seed)
    noise = torch.randn((noises, *latents.shape), generator=generator, device=latents.device)
    rows = []
    for start in range(0, model.decoder.scheduler.config.num_train_timesteps, band):
        t = torch.full((len(scenes),), start + band // 2, device=latents.device)
        row = {"t": start + band // 2}
        for name, c in conditions.items():
            losses = [model.decoder.denoising_loss(latents, c, noise=n, t=t).item() for n in noise]
            row[name] = sum(losses) / noises
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.attribute_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="ours", help="a run of the efficiency case (e.g. ours, former_ours)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, nargs="+", default=[300, 450, 600, 750], help="steps to probe at")
    p.add_argument("--vision", action="store_true", help="also probe the vision tower's tokens and the pixels")
    p.add_argument("--train-scenes", type=int, default=2000)
    p.add_argument("--heldout-scenes", type=int, default=None, help="default 500 (128 with --teacher)")
    p.add_argument("--teacher", action="store_true", help="only the teacher's loss per timestep band (see above)")
    p.add_argument("--json", default=None, help="write the results here too")
    args = p.parse_args(argv)
    if args.teacher:
        model = VLV(preset.config(seed=args.seed)).eval()
        scenes = sample_scenes(args.heldout_scenes or 128, seed=args.seed + 8, split="heldout")
        rows = teacher_penalties(model, scenes)
        for row in rows:
            gain = row["empty"] - row["true"]  # what the true caption is worth against none
            extra = "  ".join(f"{name} {(row[name] - row['true']) / gain:6.2f}" for name in ("shape", "color", "size"))
            print(f"t {row['t']:4d}  true {row['true']:.4f}  empty {row['empty']:.4f}  swapped / gain: {extra}")
        _write_json(args.json, rows)
        return 0
    runs = {r.name: r for r in all_runs()}
    if args.run not in runs:
        p.error(f"unknown run '{args.run}'; choose one of {sorted(runs)}")
    run = runs[args.run]
    model, composition, batches = _build(run, preset.TEACHER, args.seed, "cpu")
    trainer = Trainer(composition, dataclasses.replace(run.recipe.optim, seed=args.seed), desc=f"stage 1 ({run.name})")
    train = sample_scenes(args.train_scenes, seed=args.seed + 7, split="train")
    heldout = sample_scenes(args.heldout_scenes or 500, seed=args.seed + 8, split="heldout")
    x_train, x_test, y_train, y_test = renders(train), renders(heldout), labels(train), labels(heldout)
    results: dict = {"run": run.name, "seed": args.seed}
    if args.vision:
        tokens = vision_tokens(model, x_train), vision_tokens(model, x_test)
        results["vision_tokens"] = linear_probe(tokens[0], y_train, tokens[1], y_test)
        results["pixels"] = linear_probe(x_train.flatten(1), y_train, x_test.flatten(1), y_test)
        print(json.dumps({k: results[k] for k in ("vision_tokens", "pixels")}), flush=True)
    results["z"] = {}
    for step in sorted(args.steps):
        trainer.run(batches, until=step, log_every=50)
        model.eval()
        with trainer.ema_weights() if trainer.ema is not None else contextlib.nullcontext():
            results["z"][step] = linear_probe(embed(model, x_train), y_train, embed(model, x_test), y_test)
        print(json.dumps({"step": step, **{k: round(v, 3) for k, v in results["z"][step].items()}}), flush=True)
    _write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How fast does the composition term teach composition? Variants of the composition segment of
`vlv demo --from-scratch`'s stage 1, each started from the same renders-only segment.

    python -m bench.composition_segment [--steps 900] [--renders 24] [--pairs 24] [--lr 1e-3] [--seed 0]
                                        [--plain-steps 400] [--work runs/composition] [--json OUT]

The renders-only segment is `STAGE1_FROM_SCRATCH`'s (its steps set by --plain-steps), trained once per seed and kept
under WORK; the composition segment is `STAGE1_FROM_SCRATCH`'s with the given steps, renders and (a, b, a ∪ b)
triples per step and peak lr (50 warmup steps, cosine to zero, EMA). Every 100 steps the stage-1 held-out probe is
logged (`composition_recovered`: the share of the composites' caption gain their spliced z recovers); at the end the
demo's composition score on its own 100 pairs (`evaluate_composition` with the committed attribute reader: both
objects present, each alone). Each variant costs minutes on 2 cores; run them one at a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from vlv.model import VLV
from vlv.shapes import preset
from vlv.shapes.demo import DemoConfig, composition_seed
from vlv.shapes.evaluate import evaluate_composition
from vlv.shapes.reader import load_reader
from vlv.shapes.stage1 import (
    STAGE1_FROM_SCRATCH,
    TUNED_BETAS,
    TUNED_CLIP,
    TUNED_DENSITY,
    TUNED_EMA,
    Stage1Probe,
    Stage1Recipe,
    seeded,
    stage1_batches,
)
from vlv.train.recipes import AutoencoderRecipe, train_autoencoder


def ours_optim(seg: AutoencoderRecipe) -> AutoencoderRecipe:
    """`seg` with the stage-1 efficiency case's `ours` settings: AdamW's β2 at 0.95, the gradient clipped at 0.1,
    the EMA at 0.95, t/T from a logit-normal density (mean −0.5, std 1)."""
    optim = dataclasses.replace(seg.optim, betas=TUNED_BETAS, grad_clip=TUNED_CLIP, ema_decay=TUNED_EMA)
    return dataclasses.replace(seg, optim=optim, timestep_logit_normal=TUNED_DENSITY)


def renders_only(seed: int, steps: int, work: Path, *, ours: bool = False, lr: float | None = None) -> Path:
    """The shared first segment: trained once per (seed, steps, optimizer settings), then loaded."""
    plain = STAGE1_FROM_SCRATCH.plain
    name = f"plain_s{seed}_{steps}" + (f"_lr{lr:g}" if lr else "") + ("_ours" if ours else "")
    lr = lr or plain.optim.lr
    plain = dataclasses.replace(plain, optim=dataclasses.replace(plain.optim, steps=steps, lr=lr))
    if ours:
        plain = ours_optim(plain)
    out = work / name
    if not (out / "config.json").exists():
        recipe = Stage1Recipe(plain, None, 0, seed)
        model = VLV(preset.config(seed=seed))
        train_autoencoder(model, stage1_batches(recipe, compose=False), seeded(plain, seed, "plain"), log_every=10**9)
        model.save_pretrained(out)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    recipe = STAGE1_FROM_SCRATCH
    p.add_argument("--steps", type=int, default=recipe.compose.optim.steps, help="composition steps")
    p.add_argument("--renders", type=int, default=recipe.compose.batch_size, help="renders per step")
    p.add_argument("--pairs", type=int, default=recipe.composition_pairs, help="composite triples per step")
    p.add_argument("--lr", type=float, default=recipe.compose.optim.lr, help="peak lr of the composition segment")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plain-steps", type=int, default=recipe.plain.optim.steps)
    p.add_argument(
        "--ours-optim",
        action="store_true",
        help="both segments with the efficiency case's ours settings (β2 0.95, clip 0.1, EMA 0.95, logit-normal t)",
    )
    p.add_argument("--plain-lr", type=float, default=None, help="peak lr of the renders-only segment")
    p.add_argument("--work", default="runs/composition", help="where the shared renders-only segment is kept")
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args()

    config = preset.config(seed=args.seed)
    start = renders_only(args.seed, args.plain_steps, Path(args.work), ours=args.ours_optim, lr=args.plain_lr)
    model = VLV.from_pretrained(start, teacher=config.teacher.source, seed=args.seed)
    probe = Stage1Probe(model, args.seed)
    optim = dataclasses.replace(recipe.compose.optim, steps=args.steps, lr=args.lr)
    compose = dataclasses.replace(recipe.compose, optim=optim, batch_size=args.renders)
    if args.ours_optim:
        compose = ours_optim(compose)
    recipe = dataclasses.replace(recipe, compose=compose, composition_pairs=args.pairs, seed=args.seed)
    log = [{"step": 0, **probe(model.eval())}]
    t0 = time.perf_counter()

    def on_log(entry: dict) -> None:
        entry.update(probe(model.eval()))
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items()}), flush=True)

    seg = seeded(compose, args.seed, "compose")
    log += train_autoencoder(model, stage1_batches(recipe, compose=True), seg, log_every=100, on_log=on_log)
    seconds = time.perf_counter() - t0
    demo = dataclasses.replace(DemoConfig.full(from_scratch=True), seed=args.seed)  # the demo's own 100 pairs
    scores, _ = evaluate_composition(
        model.eval(), load_reader(preset.READER), demo.composition_pairs, composition_seed(demo)
    )
    result = {"args": vars(args), "seconds": seconds, "probe": probe(model), "composition": scores, "log": log}
    print(json.dumps({k: result[k] for k in ("seconds", "probe", "composition")}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

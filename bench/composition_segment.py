"""How fast does the composition term teach composition? Variants of the composition segment of
`vlv demo --from-scratch`'s stage 1, each started from the same renders-only segment.

    python -m bench.composition_segment [--steps 900] [--renders 24] [--pairs 24] [--lr 1e-3] [--seed 0]
                                        [--plain-steps 400] [--plain-lr 6e-4] [--untuned]
                                        [--work runs/composition] [--json OUT]

The renders-only segment is `STAGE1_FROM_SCRATCH`'s (its steps and peak lr set by --plain-steps and --plain-lr),
trained once per seed and kept under WORK; the composition segment is `STAGE1_FROM_SCRATCH`'s with the given steps,
renders and (a, b, a ∪ b) triples per step and peak lr (50 warmup steps, cosine to zero, EMA). --untuned: both
segments as they were before the tuned settings (`UNTUNED`). Every 100 steps the stage-1 held-out probe is logged
(`composition_recovered`: the share of the composites' caption gain their spliced z recovers); at the end the demo's
composition score on its own 100 pairs (`evaluate_composition` with the committed attribute reader: both objects
present, each alone). Each variant costs minutes on 2 cores; run them one at a time."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
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
    Stage1Probe,
    Stage1Recipe,
    seeded,
    stage1_batches,
    two_segments,
    with_optim,
)
from vlv.train.recipes import recipe_dict, train_autoencoder

# `vlv demo --from-scratch`'s stage 1 before the tuned settings: β2 0.99, the clip at 1.0, the EMA at 0.99, stratified
# uniform t, the renders at lr 1e-3
UNTUNED = two_segments(400, 900, 24, compose_lr=1e-3, fast=True, noises=2)


def renders_only(base: Stage1Recipe, seed: int, steps: int, lr: float, work: Path, name: str) -> Path:
    """The shared first segment: `base`'s with these steps and peak lr, trained once per recipe, then loaded."""
    plain = with_optim(base.plain, steps=steps, lr=lr)
    recipe = dataclasses.replace(base, plain=plain, compose=None, composition_pairs=0, seed=seed)
    digest = hashlib.sha256(json.dumps(recipe_dict(recipe), sort_keys=True).encode()).hexdigest()[:8]
    out = work / f"{name}_{digest}"  # another recipe under the same name trains its own
    if not (out / "config.json").exists():
        model = recipe.fresh_model(preset.config(seed=seed))
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
    p.add_argument("--untuned", action="store_true", help="both segments as before the tuned settings (UNTUNED)")
    p.add_argument("--plain-lr", type=float, default=None, help="peak lr of the renders-only segment")
    p.add_argument("--work", default="runs/composition", help="where the shared renders-only segment is kept")
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args()

    base = UNTUNED if args.untuned else STAGE1_FROM_SCRATCH
    plain_lr = args.plain_lr or base.plain.optim.lr
    name = f"plain_s{args.seed}_{args.plain_steps}_lr{plain_lr:g}" + ("_untuned" if args.untuned else "_tuned")
    start = renders_only(base, args.seed, args.plain_steps, plain_lr, Path(args.work), name)
    config = preset.config(seed=args.seed)
    model = VLV.from_pretrained(start, teacher=config.teacher.source, seed=args.seed)
    probe = Stage1Probe(model, args.seed)
    compose = dataclasses.replace(with_optim(base.compose, steps=args.steps, lr=args.lr), batch_size=args.renders)
    recipe = dataclasses.replace(base, compose=compose, composition_pairs=args.pairs, seed=args.seed)
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

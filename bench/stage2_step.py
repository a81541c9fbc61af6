"""Case `stage2-step`: steps of progressive phase 1 (ψ trains; encoder and text encoder frozen) on the shapes model
over the demo's 1,000 pairs, with the conditioning cache (batches name their pairs, `keys`: each pair's c is computed
once, `vlv.compositions.Captioner.conditions`) against without it (the encoder and text encoder run at every step),
interleaved. The cache is filled first, as it is for most of a 300-step phase that draws 9,600 of 1,000 pairs."""

from __future__ import annotations

import itertools

import torch

from bench.harness import compare_rates, interleaved
from vlv.model import VLV
from vlv.shapes import preset
from vlv.shapes.demo import DemoConfig, demo_pairs, pair_batches
from vlv.shapes.stage1 import renders
from vlv.train.loop import OptimConfig, Trainer
from vlv.train.recipes import PHASE_PARTS


def run(device: str = "cpu", *, steps: int = 10, repeats: int = 5) -> dict:
    cfg = DemoConfig.full()
    model = VLV(preset.config(teacher=preset.TEACHER, seed=cfg.seed)).to(device)
    model.set_trainable(PHASE_PARTS["mlp"])
    pairs = demo_pairs(cfg)
    batches = pair_batches(pairs, cfg.batch_size, cfg.seed)
    optim = OptimConfig(steps=10**6, lr=1e-5, warmup_steps=0)
    cached, plain = model.captioner(), model.captioner()
    trainers = {"ours": Trainer(cached, optim, desc="cached"), "uncached": Trainer(plain, optim, desc="uncached")}
    images = renders(pairs)
    for i in range(0, len(pairs), 100):  # every pair's c once, 100 at a time: the filled cache
        keys = list(range(i, min(i + 100, len(pairs))))
        with torch.no_grad():
            cached.conditions({"images": images[keys].to(device), "keys": keys})
    drawn = itertools.count()  # every step draws a new batch, whichever case runs it

    def run_steps(name: str) -> None:
        for _ in range(steps):
            batch = batches(next(drawn))
            batch["images"] = batch["images"].to(device)
            if name == "uncached":
                batch.pop("keys")
            trainers[name].train_step(batch)

    times = interleaved({name: lambda name=name: run_steps(name) for name in trainers}, repeats=repeats, device=device)
    work = steps * cfg.batch_size
    return {
        "stage2_phase1_step": compare_rates(times["ours"], times["uncached"], "samples/s", work=(work, work)),
        "stage2_phase1_times": times,
    }

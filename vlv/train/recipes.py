"""Training recipes: stage 1 (the auto-encoder) and stage 2 (progressive phases, or the paired-only baseline).

A recipe says what trains and how (`OptimConfig`); the data comes from the caller as `batches(step)`. Recipes are
plain dataclasses, saved beside the weights they produced (`training.json`, see `recipe_dict`).

Progressive unfreezing (paper §3.2): phase `mlp` trains ψ only, `llm` ψ + the LLM, `encoder` ψ + the LLM + the
encoder's BART (queries and φ stay frozen). The paired-only baseline trains the same networks on the same pairs with
everything trainable from the first step and no stage 1 — the control for the paper's central claim.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from vlv.config import derive_seed
from vlv.model import VLV
from vlv.parts import TRAINABLE
from vlv.presets import STAGE1_PARTS, WORLD_PRESETS
from vlv.train.loop import OptimConfig, Trainer
from vlv.train.loop import recipe_dict as recipe_dict  # recipes are written as records here too

PHASE_PARTS = {
    "mlp": ("caption_decoder.projector",),
    "llm": ("caption_decoder.projector", "caption_decoder.llm"),
    "encoder": ("caption_decoder.projector", "caption_decoder.llm", "encoder.language_model"),
}
BASELINE_PARTS = tuple(sorted(TRAINABLE))  # paired-only: every network trains from the first step


@dataclass(frozen=True)
class AutoencoderRecipe:
    """Stage 1 on images alone (paper: 200k steps of 512, lr 5e-5 cosine, one noise per image)."""

    optim: OptimConfig
    batch_size: int = 512  # images per optimizer step (the data source draws them)
    trainable: tuple[str, ...] = STAGE1_PARTS
    noises_per_image: int = 1  # K noisy copies of each image per encoder pass
    timesteps: str = "uniform"  # how the K copies draw t: "uniform" (the paper) or "stratified" (see `Autoencoder`)
    timestep_logit_normal: tuple[float, float] | None = None  # (mean, std) of logit(t/T); None: t uniform (the paper)


@dataclass(frozen=True)
class Phase:
    """One stage-2 run: which parts train, and how."""

    name: str
    trainable: tuple[str, ...]
    optim: OptimConfig
    # > 0: add this × the stage-1 denoising loss of the same images, so that an encoder trained for captions (phase
    # `encoder`) stays one the teacher decodes. 0 is the paper's recipe.
    denoising_weight: float = 0.0


@dataclass(frozen=True)
class CaptionerRecipe:
    """Stage 2: phases run in order on image-caption pairs."""

    phases: tuple[Phase, ...]
    batch_size: int = 64  # pairs per optimizer step


def progressive(steps: tuple[int, int, int], optim: OptimConfig, *, batch_size: int = 64) -> CaptionerRecipe:
    """The paper's three progressive phases (mlp, llm, encoder), each with its own schedule and named seed."""
    phases = tuple(
        Phase(name, PHASE_PARTS[name], dataclasses.replace(optim, steps=n, seed=derive_seed(optim.seed, name)))
        for name, n in zip(PHASE_PARTS, steps)
    )
    return CaptionerRecipe(phases, batch_size)


def paired_only(steps: int, optim: OptimConfig, *, batch_size: int = 64) -> CaptionerRecipe:
    """The baseline: one phase, every part trainable, `steps` steps."""
    return CaptionerRecipe((Phase("baseline", BASELINE_PARTS, dataclasses.replace(optim, steps=steps)),), batch_size)


def autoencoder_of(model: VLV, recipe: AutoencoderRecipe):
    """The stage-1 composition `recipe` trains (its noisy copies per image and their timesteps)."""
    return model.autoencoder(
        noises_per_image=recipe.noises_per_image,
        timesteps=recipe.timesteps,
        timestep_logit_normal=recipe.timestep_logit_normal,
    )


def train_autoencoder(
    model: VLV, batches: Callable[[int], dict], recipe: AutoencoderRecipe, **run_kwargs
) -> list[dict]:
    """Stage 1: train `recipe.trainable` against the frozen teacher on `batches(step)` (images only; see
    `vlv.compositions.Autoencoder` for the batch). run_kwargs go to `Trainer.run` (log_every, on_log).

    With `recipe.optim.ema_decay` the model ends with the EMA of its trained weights, and `on_log` sees the EMA too
    (what a probe logged along the way measures is what the run would have returned there)."""
    model.set_trainable(recipe.trainable)
    trainer = Trainer(autoencoder_of(model, recipe), recipe.optim, desc="stage 1")
    on_log = run_kwargs.pop("on_log", None)
    if on_log is not None and trainer.ema is not None:
        probe = on_log

        def on_log(entry: dict) -> None:
            with trainer.ema_weights():
                probe(entry)

    log = trainer.run(batches, on_log=on_log, **run_kwargs)
    if trainer.ema is not None:
        trainer.adopt_ema()
    model.set_trainable(())
    return log


def train_captioner(
    model: VLV,
    batches: Callable[[int], dict],
    recipe: CaptionerRecipe,
    *,
    after_phase: Callable[[Phase], None] | None = None,
    log_points: int = 10,
    snapshot: Path | None = None,
    snapshot_every: int = 200,
) -> list[dict]:
    """Stage 2: each phase of `recipe` in order on `batches(step)` ({"images", "captions"}); returns one log whose
    entries name their phase. after_phase(phase) runs after each phase (e.g. to score captions).

    snapshot: a file to which the whole run's state (the model's weights, the loop's optimizer, RNGs and log) is
    written every `snapshot_every` steps; a call that finds one continues from it — bit for bit the same call
    uninterrupted — and removes it at the end. For in-process runs (`vlv train` has full checkpoints); after_phase is
    not called again for phases finished before the interruption.
    """
    resume = torch.load(snapshot, weights_only=True) if snapshot is not None and snapshot.is_file() else None
    log = [] if resume is None else resume["log"]
    for index, phase in enumerate(recipe.phases):
        if resume is not None and index < resume["phase"]:
            continue  # finished before the interruption: its weights are in the snapshot
        model.set_trainable(phase.trainable)
        composition = model.captioner(denoising_weight=phase.denoising_weight)
        trainer = Trainer(composition, phase.optim, desc=f"stage 2 ({phase.name})")
        if resume is not None:
            model.load_state_dict(resume["model"])
            trainer.load_state_dict(resume["trainer"])
            tqdm.write(f"stage 2: continuing {phase.name} from step {trainer.step} ({snapshot})")
            resume = None

        def on_step(index: int = index, trainer: Trainer = trainer, done: list = log, comp=composition) -> None:
            if snapshot is not None and trainer.step % snapshot_every == 0 and trainer.step < trainer.cfg.steps:
                state = {"phase": index, "log": done, "model": model.state_dict(), "trainer": trainer.state_dict()}
                tmp = snapshot.with_name(snapshot.name + ".tmp")
                torch.save(state, tmp)
                os.replace(tmp, snapshot)  # a run killed while saving keeps the previous snapshot
                comp.clear_cache()  # as a run resumed from here starts (`Captioner.clear_cache`)

        entries = trainer.run(batches, log_every=max(1, phase.optim.steps // log_points), on_step=on_step)
        log += [{**e, "phase": phase.name} for e in entries]
        model.set_trainable(())
        if after_phase is not None:
            after_phase(phase)
    if snapshot is not None:
        snapshot.unlink(missing_ok=True)
    return log


# ----- each preset's default recipes (what `vlv train` runs unless flags say otherwise) -------------------------


def _paper_recipes() -> tuple[AutoencoderRecipe, CaptionerRecipe]:
    """Paper §4.1: stage 1 200k steps of 512, lr 5e-5 cosine, AdamW β = (0.9, 0.99), wd 0.01, clip 1.0; stage 2
    lr 1e-5 with linear decay, batch 64, 100k steps (the paper does not split them over the phases: each phase
    defaults to the full 100k, and `--steps` sets them)."""
    stage1 = AutoencoderRecipe(OptimConfig(steps=200_000, lr=5e-5, warmup_steps=1000), batch_size=512)
    stage2 = progressive((100_000,) * 3, OptimConfig(steps=0, lr=1e-5, warmup_steps=1000, schedule="linear"))
    return stage1, stage2


def _tiny_recipes() -> tuple[AutoencoderRecipe, CaptionerRecipe]:
    """Smoke-test sizes: seconds on a CPU."""
    stage1 = AutoencoderRecipe(OptimConfig(steps=20, lr=1e-3, warmup_steps=2), batch_size=4)
    stage2 = progressive((10, 10, 10), OptimConfig(steps=0, lr=1e-3, warmup_steps=2), batch_size=4)
    return stage1, stage2


def _small_recipes() -> tuple[AutoencoderRecipe, CaptionerRecipe]:
    stage1 = AutoencoderRecipe(OptimConfig(steps=100, lr=1e-4, warmup_steps=10), batch_size=8)
    stage2 = progressive((50, 50, 50), OptimConfig(steps=0, lr=1e-4, warmup_steps=10), batch_size=8)
    return stage1, stage2


RECIPES = {"tiny": _tiny_recipes, "small": _small_recipes, "paper": _paper_recipes}


def preset_recipes(name: str) -> tuple[AutoencoderRecipe, CaptionerRecipe]:
    """The named preset's default (stage 1, stage 2) recipes; a world preset's module provides `recipes()`."""
    if name in WORLD_PRESETS:
        return importlib.import_module(WORLD_PRESETS[name]).recipes()
    if name not in RECIPES:
        raise ValueError(f"no training recipes for preset '{name}'; choose one of {sorted([*RECIPES, *WORLD_PRESETS])}")
    return RECIPES[name]()

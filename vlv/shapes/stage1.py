"""Stage 1 in the shapes world: the VLV encoder trained on unpaired renders only, against the frozen teacher.

Two segments, each a `vlv.train.AutoencoderRecipe` with its own warmup and cosine decay: renders alone, then
renders plus the *composition term* — triples (a, b, a ∪ b) of one-object renders in distinct quadrants and the
render of both together, whose spliced z (`compose_embeddings`) must denoise a ∪ b. Both read images only, no
caption. The held-out probe (`vlv.eval.probe`) is logged along the way. `make demo` starts from the committed
result (`assets/shapes_encoder`, an ordinary VLV checkpoint written by `vlv shapes train-encoder`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from vlv.checkpoint import read_training
from vlv.config import VLVConfig, derive_seed
from vlv.eval.probe import caption_gain_share, composition_gain_share, prompt_losses
from vlv.model import VLV
from vlv.shapes.preset import STAGE1_PARTS
from vlv.shapes.world import Scene, render_batch, sample_compositions, sample_scenes
from vlv.train.loop import OptimConfig
from vlv.train.recipes import AutoencoderRecipe, recipe_dict, train_autoencoder


@dataclass(frozen=True)
class Stage1Recipe:
    """Renders only, then (optionally) a second segment that adds the composition term."""

    plain: AutoencoderRecipe
    compose: AutoencoderRecipe | None = None  # the composition segment; None = no second segment
    # (a, b, a ∪ b) render triples per step of the composition segment; 0 = the second segment trains on its
    # renders alone (the same renders and schedule: the control for what the composition term teaches)
    composition_pairs: int = 8
    seed: int = 0
    # A new encoder's z starts at the teacher's empty prompt (`EncoderConfig.empty_prompt_offset`); see `fresh_model`.
    empty_prompt_offset: bool = False

    @property
    def steps(self) -> int:
        return self.plain.optim.steps + (self.compose.optim.steps if self.compose else 0)

    @property
    def renders(self) -> int:
        """Images the encoder was trained on (composites and their sources included)."""
        plain = self.plain.optim.steps * self.plain.batch_size
        if self.compose is None:
            return plain
        return plain + self.compose.optim.steps * (self.compose.batch_size + 3 * self.composition_pairs)

    def fresh_model(self, config: VLVConfig) -> VLV:
        """A new model to train this recipe from: `config`, its encoder's z starting where the recipe says."""
        encoder = dataclasses.replace(config.encoder, empty_prompt_offset=self.empty_prompt_offset)
        return VLV(dataclasses.replace(config, encoder=encoder))


# The stage-1 efficiency case's `ours` optimizer settings (`python -m bench --case stage1-efficiency`; why each one:
# `bench.stage1_efficiency.ours_run`): AdamW's β2, the gradient-norm clip, the EMA decay, and the logit-normal
# density (mean, std) of t/T, and the vision tower (random-init on shapes, trained in stage 1) at half the learning
# rate; the recipes that use them start z at the teacher's empty prompt (`Stage1Recipe.empty_prompt_offset`).
TUNED_BETAS = (0.9, 0.95)
TUNED_CLIP = 0.1
TUNED_EMA = 0.95
TUNED_DENSITY = (-0.5, 1.0)
VISION_PARTS = ("encoder.florence.vision_tower", "encoder.florence.multi_modal_projector")  # parameter-name prefixes
TUNED_LR_SCALES = tuple((part, 0.5) for part in VISION_PARTS)


def segment(
    steps: int, batch_size: int, lr: float, *, fast: bool = False, noises: int = 4, tuned: bool = False
) -> AutoencoderRecipe:
    """One stage-1 segment: `noises` noisy copies per image, 50 warmup steps then cosine to zero. fast: each image's
    copies at stratified timesteps, and the EMA of the weights (decay 0.99) as the result (with today's encoder init
    and 2 copies per image, over 3.5× less compute to 0.90 of the caption's gain than the committed encoder's recipe:
    `python -m bench --case stage1-efficiency`). tuned (implies fast): the efficiency case's `ours` settings —
    AdamW's β2 at 0.95, the gradient clipped at norm 0.1, the EMA at 0.95, t/T from a logit-normal density, the
    vision tower at half the learning rate."""
    fast = fast or tuned
    tuning = {"betas": TUNED_BETAS, "grad_clip": TUNED_CLIP, "lr_scales": TUNED_LR_SCALES} if tuned else {}
    ema = (TUNED_EMA if tuned else 0.99) if fast else None
    optim = OptimConfig(steps=steps, lr=lr, warmup_steps=50, ema_decay=ema, **tuning)
    timesteps = "stratified" if fast else "uniform"
    density = TUNED_DENSITY if tuned else None
    return AutoencoderRecipe(optim, batch_size, STAGE1_PARTS, noises, timesteps, density)


def with_optim(seg: AutoencoderRecipe, **changes) -> AutoencoderRecipe:
    """`seg` with these `OptimConfig` fields changed (steps, lr, seed, ...)."""
    return dataclasses.replace(seg, optim=dataclasses.replace(seg.optim, **changes))


def two_segments(
    plain_steps: int,
    compose_steps: int,
    composition_pairs: int,
    compose_lr: float = 3e-4,
    *,
    plain_lr: float = 1e-3,
    fast: bool = False,
    noises: int = 4,
    tuned: bool = False,
) -> Stage1Recipe:
    """tuned: both segments with the tuned settings (`segment`), z starting at the teacher's empty prompt."""
    plain = segment(plain_steps, 32, plain_lr, fast=fast, noises=noises, tuned=tuned)
    compose = segment(compose_steps, 24, compose_lr, fast=fast, noises=noises, tuned=tuned)
    return Stage1Recipe(plain, compose, composition_pairs, empty_prompt_offset=tuned)


# The committed encoder (`vlv shapes train-encoder` defaults) and the shorter stage 1 of `vlv demo --from-scratch`:
# an encoder that sees the image from step 0 (`vlv.encoder.open_cross_attention`), 2 noisy copies per render with the
# efficiency case's tuned settings (its `ours`, z starting at the teacher's empty prompt), 400 steps on renders at lr
# 6e-4, then 1,200 with 24 composition triples per step at lr 1e-3. Composition is what needs the steps (the demo's
# 100 pairs, bar 0.70; `python -m bench.composition_segment`): with 1,200, 1.00 / 0.90 / 0.95 on seeds 0 / 1 / 2;
# with 900, 0.77 on seed 0 once the noisy copies shared the teacher's keys and values (the same arithmetic to float
# rounding), and before that 0.93 / 0.85 / 0.87 on seeds 0 / 1 / 2; before z's
# start at the empty prompt and the vision tower's half lr 0.92 / 0.76 / 0.77 (0.72 on seed 1 of another machine);
# untuned (β2 0.99, clip 1, EMA 0.99, uniform stratified t, renders at lr 1e-3) 0.77 / 0.52 / 0.73, and with 650
# composition steps 0.73, 0.32 and 0.44 on three machines (each CPU trains its own stage 1); with 200 + 850 steps
# 0.42; with 40 triples per step over 500 steps 0.29; at lr 2e-3 the caption gain fell; with 12 triples per step
# composition stayed at 0.36.
STAGE1_COMMITTED = two_segments(2000, 3500, 12)
STAGE1_FROM_SCRATCH = two_segments(400, 1200, 24, compose_lr=1e-3, plain_lr=6e-4, noises=2, tuned=True)


def renders(scenes: list[Scene], size: int = 16) -> torch.Tensor:
    """(N, 3, size, size) in [0, 1]."""
    return torch.from_numpy(render_batch(scenes, size))


# The held-out probe of a stage-1 run: these exact scenes, so that a record's logged probe can be reproduced.
def probe_scenes(seed: int) -> list[Scene]:
    return sample_scenes(32, seed=seed + 202, split="heldout")


def probe_triples(seed: int) -> list[tuple[Scene, Scene, Scene]]:
    return sample_compositions(32, seed=seed + 303, split="heldout")


class Stage1Probe:
    """The held-out probe: share of the caption's gain recovered by z, and by the spliced z of two images."""

    def __init__(self, model: VLV, seed: int):
        scenes, triples = probe_scenes(seed), probe_triples(seed)
        unions = [u for *_, u in triples]
        # The fixed probe images, rendered once; the references are constant for a frozen teacher: computed once.
        self.images, self.unions = renders(scenes), renders(unions)
        self.sources = torch.stack([renders([a, b]) for a, b, _ in triples])  # (P, 2, 3, S, S)
        parts = (model.conditioner, model.decoder)
        self.references = prompt_losses(*parts, self.images, [s.caption for s in scenes])
        self.union_references = prompt_losses(*parts, self.unions, [u.caption for u in unions])

    def __call__(self, model: VLV) -> dict:
        return {
            **caption_gain_share(model, self.images, self.references),
            **composition_gain_share(model, self.sources, self.unions, self.union_references),
        }


def stage1_batches(recipe: Stage1Recipe, *, compose: bool, size: int = 16):
    """batches(step) → training-split renders, plus (sources, composites) in the composition segment."""
    seg = recipe.compose if compose else recipe.plain
    name = "compose" if compose else "plain"

    def batches(step: int) -> dict:
        seed = derive_seed(recipe.seed, f"stage1/{name}/{step}")
        batch = {"images": renders(sample_scenes(seg.batch_size, seed=seed, split="train"), size)}
        if compose and recipe.composition_pairs > 0:
            triples = sample_compositions(recipe.composition_pairs, seed=seed, split="train")
            batch["sources"] = torch.stack([renders([a, b], size) for a, b, _ in triples])
            batch["composites"] = renders([u for *_, u in triples], size)
        return batch

    return batches


def seeded(seg: AutoencoderRecipe, seed: int, name: str) -> AutoencoderRecipe:
    """`seg` with its own optimizer seed, as `run_stage1` runs the segment `name` ("plain" or "compose")."""
    return with_optim(seg, seed=derive_seed(seed, name))


def run_stage1(model: VLV, recipe: Stage1Recipe, *, log_points: int = 8) -> list[dict]:
    """Stage 1 on unpaired training-split renders only (no captions are read); logs the held-out probe."""
    probe = Stage1Probe(model, recipe.seed)
    size = model.config.teacher.image_size
    log_every = max(1, recipe.steps // log_points)
    log = []
    segments = [(recipe.plain, False)] + ([(recipe.compose, True)] if recipe.compose else [])
    for seg, compose in segments:
        offset = log[-1]["step"] if log else 0

        def on_log(entry: dict, offset: int = offset, compose: bool = compose) -> None:
            model.eval()
            entry.update(probe(model))
            entry.update(step=entry["step"] + offset, segment="compose" if compose else "plain")
            tqdm.write(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items()}))

        seg = seeded(seg, recipe.seed, "compose" if compose else "plain")
        log += train_autoencoder(model, stage1_batches(recipe, compose=compose, size=size), seg,
                                 log_every=log_every, on_log=on_log)  # fmt: skip
    return log


def stage1_record(recipe: Stage1Recipe, teacher: str | None) -> dict:
    """What identifies a stage-1 run: its recipe and the teacher's folder name."""
    return {"recipe": recipe_dict(recipe), "teacher": Path(teacher).name if teacher else None}


def recipe_of(record: dict) -> Stage1Recipe:
    """The `Stage1Recipe` a training record was made with."""

    def seg(d: dict | None) -> AutoencoderRecipe | None:
        if d is None:
            return None
        optim = OptimConfig(**{**d["optim"], "betas": tuple(d["optim"]["betas"])})
        # records written before `timesteps` existed trained with uniform timesteps
        timesteps = d.get("timesteps", "uniform")
        density = d.get("timestep_logit_normal")
        density = tuple(density) if density is not None else None
        return AutoencoderRecipe(
            optim, d["batch_size"], tuple(d["trainable"]), d["noises_per_image"], timesteps, density
        )

    r = record["recipe"]
    offset = r.get("empty_prompt_offset", False)  # absent from records written before it existed
    return Stage1Recipe(seg(r["plain"]), seg(r["compose"]), r["composition_pairs"], r["seed"], offset)


def train_encoder(model: VLV, recipe: Stage1Recipe, out: Path, *, log_points: int = 8) -> dict:
    """Train stage 1 and save the model to `out` (a VLV checkpoint with training.json); returns the record.
    log_points: about how many log entries, each with the held-out probe (a few seconds each on 2 cores)."""
    t0 = time.perf_counter()
    log = run_stage1(model, recipe, log_points=log_points)
    record = {**stage1_record(recipe, model.config.teacher.source), "seconds": time.perf_counter() - t0, "log": log}
    model.save_pretrained(out, training=record)
    return record


def obtain_stage1(
    config: VLVConfig, recipe: Stage1Recipe, source: str | None, cache: Path, *, log_points: int = 8
) -> tuple[VLV, dict]:
    """A model whose encoder went through stage 1: loaded from `source` (a committed checkpoint), from `cache` when
    it holds the same recipe and teacher, or trained now and saved to `cache`. The model uses `config`'s teacher."""
    teacher = config.teacher.source
    if source is not None:
        # The parts stage 1 did not train (the caption decoder) are initialised from `config`'s seed.
        model = VLV.from_pretrained(source, teacher=teacher, seed=config.seed)
        record = read_training(source)
        tqdm.write(f"stage 1: the committed encoder from {source} ({record['seconds']:.0f} s of training)")
        return model, record
    record = read_training(cache)
    if record is not None and {k: record[k] for k in ("recipe", "teacher")} == stage1_record(recipe, teacher):
        tqdm.write(f"stage 1: loaded the cached encoder from {cache}")
        return VLV.from_pretrained(cache, teacher=teacher, seed=config.seed), record
    model = recipe.fresh_model(config)
    return model, train_encoder(model, recipe, cache, log_points=log_points)

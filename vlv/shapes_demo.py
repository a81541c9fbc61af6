"""The shapes demo: the whole VLV method on a laptop CPU, checked against ground truth (MISSION.md §6).

    committed teacher ─► stage 1 on unpaired renders ─► stage 2 on N pairs (3 progressive phases) ─► evaluation
                                                        paired-only baseline on the same N pairs ─┘

Stage 1 is the expensive step on 2 CPU cores, so `make demo` starts from the committed stage-1 encoder
(vlv/assets/shapes_encoder, trained on renders only by `vlv shapes train-encoder`); `vlv demo --from-scratch`
trains a shorter stage 1 itself and caches it under OUT/stage1, so a second run can skip it. Everything is seeded.
Results: OUT/metrics.json, OUT/logs.json, OUT/report.html, and the final model at OUT/model (loadable with
`vlv.load`). Reconstruction and composition are measured with the stage-1 auto-encoder, captions with the final
model. Stage 1 optionally adds a composition term (`Stage1Config.composition_pairs`): the spliced z of two
one-object renders must denoise the render of both objects together — still images only, no captions.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from vlv.config import SHAPES_ENCODER, preset
from vlv.data.shapes import Scene, parse_caption, render_batch, sample_compositions, sample_scenes
from vlv.loading import load_safetensors_strict, untie
from vlv.metrics import frechet_distance
from vlv.model import VLV, compose_embeddings
from vlv.shapes_eval import AttributeReader, reading_of, score, train_reader
from vlv.train import AutoencoderTrainConfig, OptimConfig, train_autoencoder, train_captioner


@dataclass(frozen=True)
class Stage1Config:
    """Stage 1 of the shapes demo: renders only, then (optionally) a second run of steps that adds the composition
    term, with its own warmup and cosine decay. Both segments read images only."""

    train: AutoencoderTrainConfig
    compose: AutoencoderTrainConfig | None = None  # the composition segment; None = no composition term
    composition_pairs: int = 8  # (a, b, a ∪ b) render triples per step of the composition segment
    seed: int = 0

    @property
    def steps(self) -> int:
        return self.train.steps + (self.compose.steps if self.compose else 0)

    @property
    def renders(self) -> int:
        """Images the encoder was trained on (composites and their sources included)."""
        plain = self.train.steps * self.train.batch_size
        return plain + (
            self.compose.steps * (self.compose.batch_size + 3 * self.composition_pairs) if self.compose else 0
        )


def _stage1(plain_steps: int, compose_steps: int, composition_pairs: int) -> Stage1Config:
    return Stage1Config(
        AutoencoderTrainConfig(steps=plain_steps, batch_size=32, lr=1e-3, warmup_steps=50, noises_per_image=4),
        AutoencoderTrainConfig(steps=compose_steps, batch_size=24, lr=3e-4, warmup_steps=50, noises_per_image=4),
        composition_pairs,
    )


# The committed encoder (`vlv shapes train-encoder`) and the shorter stage 1 of `vlv demo --from-scratch`.
STAGE1_COMMITTED = _stage1(2000, 3500, 12)
STAGE1_FROM_SCRATCH = _stage1(1500, 500, 8)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of one demo run. `full()` is `make demo`; `quick()` is the < 2-minute smoke run used in tests."""

    stage1: Stage1Config
    phase_steps: tuple[int, int, int]  # stage-2 steps in progressive phases ψ / ψ+LLM / ψ+LLM+BART
    stage2_lr: float
    n_pairs: int  # paired captions available to stage 2 and to the baseline
    eval_scenes: int  # held-out scenes for captioning and reconstruction
    teacher_eval_scenes: int
    composition_pairs: int
    reader_steps: int
    batch_size: int = 32
    seed: int = 0
    # A committed stage-1 encoder folder to start from (`vlv shapes train-encoder`); None trains stage 1 here.
    stage1_from: str | None = None
    # `--ablations`: shorter stage-1 runs from scratch (the demo's own encoder is the largest size), and N values.
    ablation_stage1_steps: tuple[int, ...] = (250, 1000)
    ablation_pairs: tuple[int, ...] = (100, 1000, 10_000)

    @classmethod
    def full(cls, *, from_scratch: bool = False) -> DemoConfig:
        return cls(
            stage1=STAGE1_FROM_SCRATCH,
            phase_steps=(300, 300, 300),
            stage2_lr=1e-3,
            n_pairs=1000,
            eval_scenes=500,
            teacher_eval_scenes=500,
            composition_pairs=100,
            reader_steps=800,
            stage1_from=None if from_scratch else SHAPES_ENCODER,
        )

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(
            stage1=Stage1Config(
                AutoencoderTrainConfig(steps=40, batch_size=12, lr=1e-3, warmup_steps=10, noises_per_image=2),
                AutoencoderTrainConfig(steps=20, batch_size=8, lr=3e-4, warmup_steps=5, noises_per_image=2),
                composition_pairs=4,
            ),
            phase_steps=(30, 30, 30),
            stage2_lr=1e-3,
            n_pairs=200,
            eval_scenes=64,
            teacher_eval_scenes=32,
            composition_pairs=16,
            reader_steps=250,
            batch_size=16,
            ablation_stage1_steps=(10, 30),
            ablation_pairs=(50, 200, 400),
        )


def _images(scenes: list[Scene], size: int = 16) -> torch.Tensor:
    return torch.from_numpy(render_batch(scenes, size))


def fixed_noise_loss(decoder, images: torch.Tensor, c: torch.Tensor, *, noises: int = 8, seed: int = 1234) -> float:
    """Denoising loss on fixed noise and timesteps (`noises` per image), so that conditions compare fairly."""
    with torch.no_grad():
        latents = decoder.encode_images(images).repeat_interleave(noises, 0)
        gen = torch.Generator().manual_seed(seed)
        return decoder.denoising_loss(latents, c.repeat_interleave(noises, 0), gen).item()


def prompt_losses(decoder, scenes: list[Scene], *, noises: int = 8, seed: int = 1234) -> dict:
    """Held-out fixed-noise loss with the true captions and with the empty prompt (constant for a frozen teacher)."""
    images = _images(scenes, decoder.cfg.image_size)
    with torch.no_grad():
        caption = decoder.encode_prompts([s.caption for s in scenes])
        empty = decoder.encode_prompts([""] * len(scenes))
    kw = dict(noises=noises, seed=seed)
    return {
        "loss_caption": fixed_noise_loss(decoder, images, caption, **kw),
        "loss_empty": fixed_noise_loss(decoder, images, empty, **kw),
    }


def stage1_probe(model: VLV, scenes: list[Scene], references: dict | None = None) -> dict:
    """Held-out loss with z vs with the true caption vs with the empty prompt, and the gap z recovers.

    references: `prompt_losses` of the same scenes, when already computed."""
    references = references or prompt_losses(model.diffusion, scenes)
    images = _images(scenes)
    with torch.no_grad():
        z_loss = fixed_noise_loss(model.diffusion, images, model.diffusion.condition(model.encoder(images)))
    caption, empty = references["loss_caption"], references["loss_empty"]
    return {
        "loss_z": z_loss,
        "loss_caption": caption,
        "loss_empty": empty,
        "recovered": (empty - z_loss) / (empty - caption),
    }


def composition_probe(model: VLV, triples: list[tuple[Scene, Scene, Scene]], references: dict | None = None) -> dict:
    """Held-out loss of composite images a ∪ b conditioned on the spliced z of a and b, vs the true caption of a ∪ b
    and the empty prompt; `recovered` is the share of the caption's gain the splice achieves."""
    unions = [u for *_, u in triples]
    references = references or prompt_losses(model.diffusion, unions)
    with torch.no_grad():
        z = model.encoder(torch.stack([_images([a, b]) for a, b, _ in triples]).flatten(0, 1))
        c = model.diffusion.condition(compose_embeddings(z.unflatten(0, (-1, 2))))
        loss = fixed_noise_loss(model.diffusion, _images(unions), c)
    caption, empty = references["loss_caption"], references["loss_empty"]
    return {"loss_composed": loss, "composition_recovered": (empty - loss) / (empty - caption)}


def stage1_batches(cfg: Stage1Config, *, compose: bool, size: int = 16):
    """batches(step) → training-split renders, plus (sources, composites) in the composition segment."""
    train = cfg.compose if compose else cfg.train

    def batches(step: int):
        seed = cfg.seed * 1_000_003 + 17 + step + (cfg.train.steps if compose else 0)
        images = _images(sample_scenes(train.batch_size, seed=seed, split="train"), size)
        if not compose:
            return images
        triples = sample_compositions(cfg.composition_pairs, seed=seed, split="train")
        sources = torch.stack([_images([a, b], size) for a, b, _ in triples])
        return images, (sources, _images([u for *_, u in triples], size))

    return batches


def run_stage1(model: VLV, cfg: Stage1Config, *, log_points: int = 8) -> list[dict]:
    """Stage 1 on unpaired training-split renders only (no captions are read); logs held-out probes."""
    probe = sample_scenes(32, seed=cfg.seed + 202, split="heldout")
    triples = sample_compositions(32, seed=cfg.seed + 303, split="heldout")
    references = prompt_losses(model.diffusion, probe)
    union_references = prompt_losses(model.diffusion, [u for *_, u in triples])
    size = model.config.diffusion.image_size
    log_every = max(1, cfg.steps // log_points)
    log = []
    segments = [(cfg.train, False)] + ([(cfg.compose, True)] if cfg.compose else [])
    for train, compose in segments:
        offset = log[-1]["step"] if log else 0

        def on_log(entry: dict, offset: int = offset, compose: bool = compose) -> None:
            model.eval()
            entry.update(stage1_probe(model, probe, references))
            entry.update(composition_probe(model, triples, union_references))
            entry.update(step=entry["step"] + offset, segment="compose" if compose else "plain")
            model.train()
            tqdm.write(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in entry.items()}))

        batches = stage1_batches(cfg, compose=compose, size=size)
        train = dataclasses.replace(train, seed=cfg.seed)
        log += train_autoencoder(model, batches, train, log_every=log_every, on_log=on_log)
    return log


ENCODER_WEIGHTS = "encoder.safetensors"
STAGE1_RECORD = "stage1.json"


def stage1_config_of(record: dict) -> Stage1Config:
    """The `Stage1Config` a stage-1 record was trained with."""
    d = record["stage1"]
    optim = lambda t: AutoencoderTrainConfig(**{**t, "betas": tuple(t["betas"])})  # noqa: E731
    return Stage1Config(
        optim(d["train"]), optim(d["compose"]) if d["compose"] else None, d["composition_pairs"], d["seed"]
    )


def stage1_recipe(cfg: Stage1Config, teacher: str | None) -> dict:
    recipe = {"stage1": dataclasses.asdict(cfg), "teacher": Path(teacher).name if teacher else None}
    return json.loads(json.dumps(recipe))  # as it reads back from stage1.json (tuples become lists)


def save_stage1(model: VLV, directory: Path, record: dict) -> None:
    """The stage-1 product: the encoder's trained weights and a record (recipe, time, log)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in model.encoder.trained_state_dict().items()}
    tmp = directory / (ENCODER_WEIGHTS + ".tmp")
    save_file(untie(state), str(tmp), metadata={"format": "pt"})
    tmp.replace(directory / ENCODER_WEIGHTS)
    (directory / STAGE1_RECORD).write_text(json.dumps(record, indent=1) + "\n")


def load_stage1(model: VLV, directory: Path) -> dict:
    """Load a stage-1 encoder (strict about every key and shape) into `model`; returns its record."""
    if not (directory / ENCODER_WEIGHTS).is_file():
        raise FileNotFoundError(f"no stage-1 encoder at {directory} (expected {ENCODER_WEIGHTS})")
    load_safetensors_strict({"encoder": model.encoder}, str(directory / ENCODER_WEIGHTS))
    return json.loads((directory / STAGE1_RECORD).read_text())


def train_stage1(model: VLV, cfg: Stage1Config, out: Path, teacher: str | None) -> dict:
    """Train stage 1 and save it to `out`; returns the record."""
    t0 = time.perf_counter()
    log = run_stage1(model, cfg)
    record = {**stage1_recipe(cfg, teacher), "seconds": time.perf_counter() - t0, "log": log}
    save_stage1(model, out, record)
    return record


def run_stage2(
    model: VLV,
    cfg: DemoConfig,
    pairs: list[Scene],
    *,
    baseline: bool = False,
    after_phase: Callable[[int], None] | None = None,
) -> list[dict]:
    """Stage 2 on the N pairs: progressive phases, or (baseline) everything trainable from the first step.

    after_phase(i) is called after progressive phase i (1-based), e.g. to score captions phase by phase."""
    images, captions = _images(pairs), [s.caption for s in pairs]
    rng = np.random.default_rng(cfg.seed + 5)

    def batches(step: int):
        idx = rng.integers(0, len(pairs), cfg.batch_size)
        return images[idx], [captions[i] for i in idx]

    log = []
    if baseline:
        model.encoder.set_trainable(("vision", "language_model", "queries", "projection"))
        model.captioner.set_trainable(llm=True)
        opt = OptimConfig(steps=sum(cfg.phase_steps), batch_size=cfg.batch_size, lr=cfg.stage2_lr, warmup_steps=20)
        return train_captioner(model, batches, opt, log_every=max(1, opt.steps // 20))
    phases = [((), False), ((), True), (("language_model",), True)]  # (encoder parts, LLM) per phase
    for i, ((parts, llm), steps) in enumerate(zip(phases, cfg.phase_steps)):
        model.encoder.set_trainable(parts)
        model.captioner.set_trainable(llm=llm)
        opt = OptimConfig(steps=steps, batch_size=cfg.batch_size, lr=cfg.stage2_lr, warmup_steps=20, seed=cfg.seed + i)
        for e in train_captioner(model, batches, opt, log_every=max(1, steps // 10)):
            log.append({**e, "phase": i + 1})
        if after_phase is not None:
            after_phase(i + 1)
    model.encoder.set_trainable(model.config.encoder.trainable)
    return log


def evaluate_captions(model: VLV, scenes: list[Scene]) -> tuple[dict, list[str]]:
    captions = []
    images = _images(scenes)
    for i in range(0, len(scenes), 64):
        captions += model.caption(images[i : i + 64])
    readings = [reading_of(parse_caption(c)) for c in captions]
    return score(readings, [reading_of(s) for s in scenes]), captions


def evaluate_reconstruction(model: VLV, reader: AttributeReader, scenes: list[Scene]) -> tuple[dict, torch.Tensor]:
    images = _images(scenes)
    recon = torch.cat([model.reconstruct(images[i : i + 100], seed=i) for i in range(0, len(scenes), 100)])
    agreement = score(reader.read(recon), reader.read(images))
    with torch.no_grad():
        fid = frechet_distance(reader.features(recon).numpy(), reader.features(images).numpy())
    return {**agreement, "shapes_fid": fid}, recon


def evaluate_teacher(model: VLV, reader: AttributeReader, scenes: list[Scene]) -> tuple[dict, torch.Tensor]:
    """Teacher samples for held-out captions, read back: is the frozen teacher any good?"""
    samples = []
    for i in range(0, len(scenes), 100):
        c = model.diffusion.encode_prompts([s.caption for s in scenes[i : i + 100]])
        samples.append(model.diffusion.sample(c, generator=torch.Generator().manual_seed(i)))
    samples = torch.cat(samples)
    return score(reader.read(samples), [reading_of(s) for s in scenes]), samples


def evaluate_composition(model: VLV, reader: AttributeReader, n: int, seed: int) -> tuple[dict, list]:
    """Two single-object images in different quadrants, z spliced (equal split), decoded: are both objects there?

    An object is present when the reader finds it, with its size, color and shape, in its quadrant. Also returned:
    how often the first image's object (leading tokens) and the second's (trailing tokens) are present alone.
    """
    rng = np.random.default_rng(seed)
    singles = [s for s in sample_scenes(20 * n, seed=seed, split="all") if len(s.objects) == 1]
    present, examples = np.zeros((n, 2), dtype=bool), []
    for k in range(n):
        a = singles[rng.integers(len(singles))]
        b = next(
            s for s in singles[rng.integers(len(singles)) :] + singles if s.objects[0].position != a.objects[0].position
        )
        composed = model.compose(_images([a, b]), seed=k)
        reading = reader.read(composed)[0]
        present[k] = [reading[s.objects[0].position] == s.objects[0] for s in (a, b)]
        if len(examples) < 8:
            examples.append((a, b, composed[0], bool(present[k].all())))
    first, second = present.mean(0).tolist()
    return {"both_present": float(present.all(1).mean()), "first_present": first, "second_present": second}, examples


def _recipe_of(directory: Path) -> dict:
    record = json.loads((directory / STAGE1_RECORD).read_text())
    return {k: record.get(k) for k in ("stage1", "teacher")}


def demo_base_config(cfg: DemoConfig, teacher: str | None):
    base = preset("shapes")
    if teacher is not None:
        base = dataclasses.replace(base, diffusion=dataclasses.replace(base.diffusion, source=teacher))
    return dataclasses.replace(base, seed=cfg.seed)


def obtain_stage1(base, stage1: Stage1Config, source: str | None, cache: Path) -> tuple[VLV, dict]:
    """A model whose encoder went through stage 1: loaded from `source` (a committed encoder), from `cache` when it
    holds the same recipe, or trained now and saved to `cache`."""
    torch.manual_seed(base.seed)
    model = VLV(base)
    if source is not None:
        record = load_stage1(model, Path(source))
        tqdm.write(f"stage 1: the committed encoder from {source} ({record['seconds']:.0f} s of training)")
    elif (cache / STAGE1_RECORD).is_file() and _recipe_of(cache) == stage1_recipe(stage1, base.diffusion.source):
        record = load_stage1(model, cache)
        tqdm.write(f"stage 1: loaded the cached encoder from {cache}")
    else:
        record = train_stage1(model, stage1, cache, base.diffusion.source)
    return model, record


def demo_pairs(cfg: DemoConfig, n: int | None = None) -> list[Scene]:
    """The N paired captions of stage 2 and the baseline (training split)."""
    return sample_scenes(cfg.n_pairs if n is None else n, seed=cfg.seed + 303, split="train")


def run_shapes_demo(out: Path, cfg: DemoConfig, *, teacher: str | None = None, ablations: bool = False) -> dict:
    """The whole demo; returns metrics.json's content. ablations: also run `run_ablations` (up to an hour)."""
    from vlv.report import write_report

    start, seconds = time.perf_counter(), {}
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    base = demo_base_config(cfg, teacher)

    def lap(name: str, t0: float) -> None:
        seconds[name] = time.perf_counter() - t0
        tqdm.write(f"[{name}] {seconds[name]:.0f} s")

    t0 = time.perf_counter()
    reader = train_reader(steps=cfg.reader_steps, seed=cfg.seed)
    heldout = sample_scenes(cfg.eval_scenes, seed=cfg.seed + 101, split="heldout")
    reader_check = score(reader.read(_images(heldout)), [reading_of(s) for s in heldout])
    lap("attribute_reader", t0)

    t0 = time.perf_counter()
    model, stage1 = obtain_stage1(base, cfg.stage1, cfg.stage1_from, out / "stage1")
    lap("stage1", t0)

    # Reconstruction and composition are the auto-encoder's products: keep the stage-1 model, because progressive
    # phase 3 trains BART for captioning and moves z away from what the teacher decodes best.
    autoencoder = copy.deepcopy(model).eval()
    pairs = demo_pairs(cfg)
    t0 = time.perf_counter()
    by_phase = []
    eval_seconds = 0.0

    def after_phase(phase: int) -> None:
        nonlocal eval_seconds
        t = time.perf_counter()
        by_phase.append(evaluate_captions(model.eval(), heldout))
        model.train()
        eval_seconds += time.perf_counter() - t

    stage2_log = run_stage2(model, cfg, pairs, after_phase=after_phase)
    lap("stage2", t0)
    seconds["stage2"] -= eval_seconds  # the per-phase captioning belongs to the evaluation

    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    baseline = VLV(base)
    baseline_log = run_stage2(baseline, cfg, pairs, baseline=True)
    lap("baseline", t0)

    t0 = time.perf_counter()
    model.eval()
    teacher_scores, teacher_samples = evaluate_teacher(model, reader, heldout[: cfg.teacher_eval_scenes])
    caption_scores, captions = by_phase[-1]  # after phase 3 the model is final: its captions are already scored
    baseline_scores, _ = evaluate_captions(baseline.eval(), heldout)
    recon_scores, recon = evaluate_reconstruction(autoencoder, reader, heldout)
    composition, compositions = evaluate_composition(autoencoder, reader, cfg.composition_pairs, cfg.seed + 404)
    probe = sample_scenes(32, seed=cfg.seed + 202, split="heldout")
    final_probe = {"stage1_model": stage1_probe(autoencoder, probe), "final_model": stage1_probe(model, probe)}
    lap("evaluation", t0)
    seconds["evaluation"] += eval_seconds

    model.save_pretrained(out / "model")
    metrics = {
        "teacher_attribute_accuracy": teacher_scores["attribute_accuracy"],
        "caption_exact": caption_scores["exact"],
        "caption_attribute_accuracy": caption_scores["attribute_accuracy"],
        "reconstruction_attribute_agreement": recon_scores["attribute_accuracy"],
        "shapes_fid": recon_scores["shapes_fid"],
        "composition_both_present": composition["both_present"],
        "baseline_caption_exact": baseline_scores["exact"],
        "n_pairs": cfg.n_pairs,
        "seconds_total": time.perf_counter() - start,
        "seconds_by_phase": seconds,
        "details": {
            "reader_on_clean_heldout": reader_check,
            "teacher": teacher_scores,
            "captions": caption_scores,
            "caption_exact_by_phase": [scores["exact"] for scores, _ in by_phase],
            "baseline_captions": baseline_scores,
            "reconstruction": recon_scores,
            "composition": composition,
            "stage1_probe": final_probe,
            "stage1": {k: v for k, v in stage1.items() if k != "log"} | {"from": cfg.stage1_from or "trained here"},
            "eval_scenes": len(heldout),
        },
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    logs = {"stage1": stage1["log"], "stage2": stage2_log, "baseline": baseline_log}
    (out / "logs.json").write_text(json.dumps(logs, indent=1) + "\n")
    ablation = None
    if ablations:
        ablation = run_ablations(out, cfg, base, heldout, metrics, stage1)
        (out / "ablations.json").write_text(json.dumps(ablation, indent=2) + "\n")
    write_report(
        out / "report.html",
        metrics=metrics,
        scenes=heldout[:12],
        originals=_images(heldout[:12]),
        reconstructions=recon[:12],
        captions=captions[:12],
        teacher_samples=teacher_samples[:12],
        teacher_scenes=heldout[:12],
        compositions=compositions,
        curves={"stage 1 (train loss)": stage1["log"], "stage 2": stage2_log, "baseline": baseline_log},
        ablations=ablation,
    )
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# Ablations (`vlv demo --ablations`)


def run_ablations(out: Path, cfg: DemoConfig, base, heldout: list[Scene], metrics: dict, stage1: dict) -> dict:
    """Caption exactness vs the amount of stage 1, after each progressive phase, and vs N (VLV and baseline)."""

    def stage1_row(record: dict, exact: float) -> dict:
        recipe, recovered = stage1_config_of(record), record["log"][-1]["recovered"]
        return {"stage1_steps": recipe.steps, "renders": recipe.renders, "recovered": recovered, "caption_exact": exact}

    rows_stage1 = []
    for steps in cfg.ablation_stage1_steps:  # renders only, no composition segment
        recipe = Stage1Config(dataclasses.replace(cfg.stage1.train, steps=steps), seed=cfg.seed)
        model, record = obtain_stage1(base, recipe, None, out / "ablations" / f"stage1_{steps}")
        run_stage2(model, cfg, demo_pairs(cfg))
        rows_stage1.append(stage1_row(record, evaluate_captions(model.eval(), heldout)[0]["exact"]))
    rows_stage1.append(stage1_row(stage1, metrics["caption_exact"]))
    rows_pairs = []
    for n in cfg.ablation_pairs:
        if n == cfg.n_pairs:
            vlv_exact, base_exact = metrics["caption_exact"], metrics["baseline_caption_exact"]
        else:
            pairs = demo_pairs(cfg, n)
            model, _ = obtain_stage1(base, cfg.stage1, cfg.stage1_from, out / "stage1")
            run_stage2(model, cfg, pairs)
            vlv_exact = evaluate_captions(model.eval(), heldout)[0]["exact"]
            torch.manual_seed(cfg.seed)
            baseline = VLV(base)
            run_stage2(baseline, cfg, pairs, baseline=True)
            base_exact = evaluate_captions(baseline.eval(), heldout)[0]["exact"]
        rows_pairs.append({"n_pairs": n, "vlv_caption_exact": vlv_exact, "baseline_caption_exact": base_exact})
    phases = [{"phase": i + 1, "caption_exact": e} for i, e in enumerate(metrics["details"]["caption_exact_by_phase"])]
    return {"stage1_amount": rows_stage1, "phases": phases, "n_pairs": rows_pairs}


# ----------------------------------------------------------------------------------------------------------------
# The shapes teacher


def shapes_batches(batch_size: int, seed: int, size: int):
    """batches(step) → (images (B, 3, size, size) in [0, 1], captions) of training-split scenes, seeded per step."""

    def batches(step: int):
        scenes = sample_scenes(batch_size, seed=seed * 1_000_003 + step, split="train")
        return torch.from_numpy(render_batch(scenes, size)), [s.caption for s in scenes]

    return batches


def teacher_gap(decoder, n: int = 256, seed: int = 12345) -> dict:
    """Held-out denoising loss with the true caption vs the empty prompt, same noise and timesteps."""
    losses = prompt_losses(decoder, sample_scenes(n, seed=seed, split="heldout"), noises=1, seed=seed)
    cond, uncond = losses["loss_caption"], losses["loss_empty"]
    return {"heldout_loss_caption": cond, "heldout_loss_empty": uncond, "heldout_gap": 1 - cond / uncond}


def train_shapes_teacher(out: Path, cfg=None) -> None:
    """`vlv shapes train-teacher`: train the shapes teacher from scratch and save it (diffusers layout)."""
    from vlv.diffusion import DiffusionDecoder
    from vlv.teacher import TeacherTrainConfig, train_teacher

    cfg = cfg or TeacherTrainConfig()
    dcfg = preset("shapes").diffusion
    decoder = DiffusionDecoder(dcfg, pretrained=False)
    batches = shapes_batches(cfg.batch_size, cfg.seed, dcfg.image_size)
    train_teacher(decoder, batches, cfg, out, on_snapshot=lambda ema, samples: teacher_gap(ema))

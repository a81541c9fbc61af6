"""The shapes demo: the whole VLV method on a laptop CPU, checked against ground truth (MISSION.md §6).

    committed teacher ─► stage 1 on unpaired renders ─► stage 2 on N pairs (3 progressive phases) ─► evaluation
                                                        paired-only baseline on the same N pairs ─┘

Everything is seeded. Stage 1 is cached under OUT/stage1 so a second run can skip it. Results: OUT/metrics.json,
OUT/report.html, and the final model at OUT/model (loadable with `vlv.load`). Reconstruction and composition are
measured with the stage-1 auto-encoder (OUT/stage1), captions with the final model.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vlv.config import preset
from vlv.data.shapes import Scene, parse_caption, render_batch, sample_scenes
from vlv.metrics import frechet_distance
from vlv.model import VLV
from vlv.shapes_eval import AttributeReader, reading_of, score, train_reader
from vlv.train import AutoencoderTrainConfig, OptimConfig, train_autoencoder, train_captioner


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of one demo run. `full()` is `make demo`; `quick()` is the < 2-minute smoke run used in tests."""

    stage1: AutoencoderTrainConfig
    phase_steps: tuple[int, int, int]  # stage-2 steps in progressive phases ψ / ψ+LLM / ψ+LLM+BART
    stage2_lr: float
    n_pairs: int  # paired captions available to stage 2 and to the baseline
    eval_scenes: int  # held-out scenes for captioning and reconstruction
    teacher_eval_scenes: int
    composition_pairs: int
    reader_steps: int
    batch_size: int = 32
    seed: int = 0

    @classmethod
    def full(cls) -> DemoConfig:
        return cls(
            stage1=AutoencoderTrainConfig(
                steps=2000, batch_size=32, lr=1e-3, warmup_steps=50, noises_per_image=4, head_lr_scale=1.0
            ),
            phase_steps=(300, 300, 300),
            stage2_lr=1e-3,
            n_pairs=1000,
            eval_scenes=500,
            teacher_eval_scenes=500,
            composition_pairs=100,
            reader_steps=800,
        )

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(
            stage1=AutoencoderTrainConfig(steps=60, batch_size=16, lr=1e-3, warmup_steps=10, noises_per_image=2),
            phase_steps=(30, 30, 30),
            stage2_lr=1e-3,
            n_pairs=200,
            eval_scenes=64,
            teacher_eval_scenes=32,
            composition_pairs=16,
            reader_steps=250,
            batch_size=16,
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


def run_stage1(model: VLV, cfg: DemoConfig, probe_scenes: list[Scene]) -> list[dict]:
    """Stage 1 on unpaired training-split renders only (no captions are read)."""
    size = model.config.diffusion.image_size
    B = cfg.stage1.batch_size

    def batches(step: int) -> torch.Tensor:
        return _images(sample_scenes(B, seed=cfg.seed * 1_000_003 + 17 + step, split="train"), size)

    references = prompt_losses(model.diffusion, probe_scenes)

    def on_log(entry: dict) -> None:
        model.eval()
        entry.update(stage1_probe(model, probe_scenes, references))
        model.train()

    return train_autoencoder(model, batches, cfg.stage1, log_every=max(1, cfg.stage1.steps // 8), on_log=on_log)


def run_stage2(model: VLV, cfg: DemoConfig, pairs: list[Scene], *, baseline: bool = False) -> list[dict]:
    """Stage 2 on the N pairs: progressive phases, or (baseline) everything trainable from the first step."""
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
    """Two single-object images in different quadrants, z spliced (equal split), decoded: are both objects there?"""
    rng = np.random.default_rng(seed)
    singles = [s for s in sample_scenes(20 * n, seed=seed, split="all") if len(s.objects) == 1]
    hits, examples = 0, []
    for k in range(n):
        a = singles[rng.integers(len(singles))]
        b = next(
            s for s in singles[rng.integers(len(singles)) :] + singles if s.objects[0].position != a.objects[0].position
        )
        composed = model.compose(_images([a, b]), seed=k)
        reading = reader.read(composed)[0]
        both = all(reading[s.objects[0].position] == s.objects[0] for s in (a, b))
        hits += both
        if len(examples) < 8:
            examples.append((a, b, composed[0], both))
    return {"both_present": hits / n}, examples


def run_shapes_demo(out: Path, cfg: DemoConfig, *, teacher: str | None = None) -> dict:
    """The whole demo; returns metrics.json's content."""
    from vlv.report import write_report

    start, seconds = time.perf_counter(), {}
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    base = preset("shapes")
    if teacher is not None:
        base = dataclasses.replace(base, diffusion=dataclasses.replace(base.diffusion, source=teacher))
    base = dataclasses.replace(base, seed=cfg.seed)

    def lap(name: str, t0: float) -> None:
        seconds[name] = time.perf_counter() - t0
        tqdm.write(f"[{name}] {seconds[name]:.0f} s")

    t0 = time.perf_counter()
    reader = train_reader(steps=cfg.reader_steps, seed=cfg.seed)
    heldout = sample_scenes(cfg.eval_scenes, seed=cfg.seed + 101, split="heldout")
    reader_check = score(reader.read(_images(heldout)), [reading_of(s) for s in heldout])
    lap("attribute_reader", t0)

    # Stage 1 (cached: a second run with the same settings loads it).
    t0 = time.perf_counter()
    stage1_dir = out / "stage1"
    probe = sample_scenes(32, seed=cfg.seed + 202, split="heldout")
    stamp = json.dumps({"stage1": dataclasses.asdict(cfg.stage1), "seed": cfg.seed, "teacher": base.diffusion.source})
    if (stage1_dir / "stamp.json").is_file() and (stage1_dir / "stamp.json").read_text() == stamp:
        model = VLV.from_pretrained(stage1_dir)
        stage1_log = json.loads((stage1_dir / "log.json").read_text())
        tqdm.write(f"stage 1: loaded the cached encoder from {stage1_dir}")
    else:
        model = VLV(base)
        stage1_log = run_stage1(model, cfg, probe)
        model.save_pretrained(stage1_dir)
        (stage1_dir / "log.json").write_text(json.dumps(stage1_log, indent=2))
        (stage1_dir / "stamp.json").write_text(stamp)
    lap("stage1", t0)

    # Reconstruction and composition are the auto-encoder's products: keep the stage-1 model, because progressive
    # phase 3 trains BART for captioning and moves z away from what the teacher decodes best.
    autoencoder = copy.deepcopy(model).eval()
    pairs = sample_scenes(cfg.n_pairs, seed=cfg.seed + 303, split="train")
    t0 = time.perf_counter()
    stage2_log = run_stage2(model, cfg, pairs)
    lap("stage2", t0)

    t0 = time.perf_counter()
    baseline = VLV(base)
    baseline_log = run_stage2(baseline, cfg, pairs, baseline=True)
    lap("baseline", t0)

    t0 = time.perf_counter()
    model.eval()
    teacher_scores, teacher_samples = evaluate_teacher(model, reader, heldout[: cfg.teacher_eval_scenes])
    caption_scores, captions = evaluate_captions(model, heldout)
    baseline_scores, _ = evaluate_captions(baseline.eval(), heldout)
    recon_scores, recon = evaluate_reconstruction(autoencoder, reader, heldout)
    composition, compositions = evaluate_composition(autoencoder, reader, cfg.composition_pairs, cfg.seed + 404)
    final_probe = {"stage1_model": stage1_probe(autoencoder, probe), "final_model": stage1_probe(model, probe)}
    lap("evaluation", t0)

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
            "baseline_captions": baseline_scores,
            "reconstruction": recon_scores,
            "stage1_probe": final_probe,
            "eval_scenes": len(heldout),
        },
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    logs = {"stage1": stage1_log, "stage2": stage2_log, "baseline": baseline_log}
    (out / "logs.json").write_text(json.dumps(logs, indent=1) + "\n")
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
        curves={"stage 1 (train loss)": stage1_log, "stage 2": stage2_log, "baseline": baseline_log},
    )
    return metrics


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

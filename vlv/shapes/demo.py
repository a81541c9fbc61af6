"""The shapes demo: the whole VLV method on a laptop CPU, checked against ground truth.

    committed teacher ─► stage 1 on unpaired renders ─► stage 2 on N pairs (3 progressive phases) ─► evaluation
                                                        paired-only baseline on the same N pairs ─┘

Stage 1 is the expensive step on 2 CPU cores, so `make demo` starts from the committed stage-1 checkpoint
(`assets/shapes_encoder`, trained on renders only by `vlv shapes train-encoder`); `vlv demo --from-scratch` trains a
shorter stage 1 itself and caches it under OUT/stage1, so a second run can skip it. Everything is seeded.
Results: OUT/metrics.json, OUT/logs.json, OUT/report.html, the final model at OUT/model (loadable with `vlv.load`)
and the paired-only baseline at OUT/baseline. The final model captions with its stage-2 encoder and reconstructs and
composes with the stage-1 encoder it keeps; every number is measured on that model.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vlv.config import VLVConfig, derive_seed
from vlv.model import VLV
from vlv.shapes import preset
from vlv.shapes.evaluate import evaluate_captions, evaluate_composition, evaluate_reconstruction, evaluate_teacher
from vlv.shapes.reader import AttributeReader, load_reader, reading_of, score, train_reader
from vlv.shapes.stage1 import (
    STAGE1_FROM_SCRATCH,
    Stage1Probe,
    Stage1Recipe,
    obtain_stage1,
    renders,
    segment,
)
from vlv.shapes.world import Scene, sample_scenes
from vlv.train.loop import OptimConfig
from vlv.train.recipes import CaptionerRecipe, Phase, paired_only, progressive, recipe_dict, train_captioner


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of one demo run. `full()` is `make demo`; `quick()` is the tests' smoke run (2–3 min, 2 cores)."""

    stage1: Stage1Recipe
    phase_steps: tuple[int, int, int]  # stage-2 steps in progressive phases ψ / ψ+LLM / ψ+LLM+BART
    stage2_lr: float
    n_pairs: int  # paired captions available to stage 2 and to the baseline
    eval_scenes: int  # held-out scenes for captioning and reconstruction
    # The first this many held-out scenes serve the two diagnostics: teacher samples from the true captions, and
    # reconstruction by the captioner's own encoder (the bars use all `eval_scenes`).
    diagnostic_scenes: int
    composition_pairs: int
    reader_steps: int  # when the reader is trained here (no `reader_from`)
    batch_size: int = 32
    stage1_log_points: int = 8  # stage-1 log entries, each with the held-out probe
    seed: int = 0
    # A committed stage-1 checkpoint to start from (`vlv shapes train-encoder`); None trains stage 1 here.
    stage1_from: str | None = None
    # The attribute reader that scores images: a committed one (`vlv shapes train-reader`), or None to train one here.
    reader_from: str | None = None
    # `--ablations`: shorter stage-1 runs from scratch (the demo's own encoder is the largest size), and N values.
    ablation_stage1_steps: tuple[int, ...] = (250, 1000)
    ablation_pairs: tuple[int, ...] = (100, 1000, 10_000)
    # > 0: progressive phase 3 also keeps this × the stage-1 denoising loss (`Phase.denoising_weight`).
    phase3_denoising: float = 0.0

    @classmethod
    def full(cls, *, from_scratch: bool = False) -> DemoConfig:
        return cls(
            stage1=STAGE1_FROM_SCRATCH,
            phase_steps=(300, 300, 300),
            stage2_lr=1e-3,
            n_pairs=1000,
            eval_scenes=500,
            diagnostic_scenes=100,
            composition_pairs=100,
            reader_steps=800,
            stage1_from=None if from_scratch else preset.ENCODER,
            reader_from=preset.READER,  # the same reader as 800 steps at seed 0 give, bit for bit
        )

    @classmethod
    def quick(cls) -> DemoConfig:
        return cls(
            stage1=Stage1Recipe(segment(20, 12, 1e-3), segment(10, 8, 3e-4), composition_pairs=4),
            phase_steps=(20, 20, 20),
            stage2_lr=1e-3,
            n_pairs=200,
            eval_scenes=64,
            diagnostic_scenes=32,
            composition_pairs=16,
            reader_steps=160,
            batch_size=16,
            stage1_log_points=4,
            ablation_stage1_steps=(10,),
            ablation_pairs=(50, 200),  # 200 = n_pairs: the demo's own run, not trained again
        )

    def stage2(self) -> CaptionerRecipe:
        """The progressive phases, each with 20 warmup steps and cosine decay to zero."""
        recipe = progressive(self.phase_steps, self._stage2_optim(), batch_size=self.batch_size)
        *first, last = recipe.phases
        last = dataclasses.replace(last, denoising_weight=self.phase3_denoising)
        return dataclasses.replace(recipe, phases=(*first, last))

    def baseline(self, steps: int | None = None) -> CaptionerRecipe:
        """The paired-only baseline: every part trainable from the first step, for `steps` steps — by default the
        phases' total, i.e. equal stage-2 compute."""
        steps = sum(self.phase_steps) if steps is None else steps
        return paired_only(steps, self._stage2_optim(), batch_size=self.batch_size)

    def _stage2_optim(self) -> OptimConfig:
        return OptimConfig(steps=0, lr=self.stage2_lr, warmup_steps=20, seed=self.seed)  # steps: set per phase


def demo_reader(cfg: DemoConfig) -> AttributeReader:
    """The run's attribute reader: `cfg.reader_from`, else trained now for `cfg.reader_steps`."""
    if cfg.reader_from is not None:
        return load_reader(cfg.reader_from)
    return train_reader(steps=cfg.reader_steps, seed=cfg.seed)


# The demo's fixed scene sets, each seeded from the run's seed here and only here.
def heldout_scenes(cfg: DemoConfig) -> list[Scene]:
    return sample_scenes(cfg.eval_scenes, seed=cfg.seed + 101, split="heldout")


def demo_pairs(cfg: DemoConfig, n: int | None = None) -> list[Scene]:
    """The N paired captions of stage 2 and the baseline (training split)."""
    return sample_scenes(cfg.n_pairs if n is None else n, seed=cfg.seed + 303, split="train")


def composition_seed(cfg: DemoConfig) -> int:
    return cfg.seed + 404


def pair_batches(pairs: list[Scene], batch_size: int, seed: int):
    """batches(step) → {images, captions, keys}: `batch_size` pairs drawn with replacement, seeded per step; keys
    are the pairs' indices (while the encoder is frozen, each pair's conditioning is computed once)."""
    images, captions = renders(pairs), [s.caption for s in pairs]

    def batches(step: int) -> dict:
        idx = np.random.default_rng(derive_seed(seed, f"pairs/{step}")).integers(0, len(pairs), batch_size)
        return {"images": images[idx], "captions": [captions[i] for i in idx], "keys": idx.tolist()}

    return batches


def demo_stage1(base: VLVConfig, cfg: DemoConfig, out: Path) -> tuple[VLV, dict]:
    """The run's stage-1 model: `cfg.stage1_from`, else the one cached under OUT/stage1, else trained there now."""
    return obtain_stage1(base, cfg.stage1, cfg.stage1_from, out / "stage1", log_points=cfg.stage1_log_points)


def run_stage2(model: VLV, recipe: CaptionerRecipe, pairs: list[Scene], seed: int, **kwargs) -> list[dict]:
    """Stage 2 (or the baseline) on the N pairs; kwargs go to `train_captioner` (after_phase, log_points)."""
    return train_captioner(model, pair_batches(pairs, recipe.batch_size, seed), recipe, **kwargs)


def environment() -> dict:
    """What a run's numbers depend on beyond the code and the seed: on one machine runs agree to the bit, across
    machines (CPU model, thread count, torch build) the floating-point order differs and so do the last digits."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu,
        "python": platform.python_version(),
    }


def run_shapes_demo(out: Path, cfg: DemoConfig, *, teacher: str = preset.TEACHER, ablations: bool = False) -> dict:
    """The whole demo; returns metrics.json's content. ablations: also run `run_ablations` (up to an hour)."""
    from vlv.shapes.ablations import run_ablations
    from vlv.shapes.report import write_report

    start, seconds = time.perf_counter(), {}
    out.mkdir(parents=True, exist_ok=True)
    base = preset.config(teacher=teacher, seed=cfg.seed)

    def lap(name: str, t0: float) -> None:
        seconds[name] = time.perf_counter() - t0
        tqdm.write(f"[{name}] {seconds[name]:.0f} s")

    t0 = time.perf_counter()
    reader = demo_reader(cfg)
    heldout = heldout_scenes(cfg)
    reader_check = score(reader.read(renders(heldout)), [reading_of(s) for s in heldout])
    lap("attribute_reader", t0)

    t0 = time.perf_counter()
    model, stage1 = demo_stage1(base, cfg, out)
    lap("stage1", t0)

    # The stage-1 encoder's probe, before stage 2: progressive phase 3 trains BART for captioning and moves z away
    # from what the teacher decodes best. The model keeps that encoder for reconstruction (`VLV.stage1_encoder`).
    probe = Stage1Probe(model, cfg.seed)
    stage1_probe = probe(model)
    pairs = demo_pairs(cfg)
    t0 = time.perf_counter()
    by_phase = []
    eval_seconds = 0.0

    def after_phase(phase: Phase) -> None:
        nonlocal eval_seconds
        t = time.perf_counter()
        by_phase.append(evaluate_captions(model.eval(), heldout))
        eval_seconds += time.perf_counter() - t

    stage2_log = run_stage2(model, cfg.stage2(), pairs, cfg.seed, after_phase=after_phase)
    lap("stage2", t0)
    seconds["stage2"] -= eval_seconds  # the per-phase captioning belongs to the evaluation

    t0 = time.perf_counter()
    baseline = VLV(base)
    baseline_log = run_stage2(baseline, cfg.baseline(), pairs, cfg.seed, log_points=20)
    lap("baseline", t0)

    t0 = time.perf_counter()
    model.eval()
    teacher_scores, teacher_samples = evaluate_teacher(model, reader, heldout[: cfg.diagnostic_scenes])
    caption_scores, captions = by_phase[-1]  # after phase 3 the model is final: its captions are already scored
    baseline_scores, _ = evaluate_captions(baseline.eval(), heldout)
    # The final model reconstructs and composes with the stage-1 encoder it kept; `final_model` probes the
    # captioner's own encoder, after phase 3.
    recon_scores, recon = evaluate_reconstruction(model, reader, heldout)
    kept, model.stage1_encoder = model.stage1_encoder, None  # for a moment, reconstruct with the captioner's encoder
    own_recon_scores, _ = evaluate_reconstruction(model, reader, heldout[: cfg.diagnostic_scenes])
    model.stage1_encoder = kept
    composition, compositions = evaluate_composition(model, reader, cfg.composition_pairs, composition_seed(cfg))
    final_probe = {"stage1_model": stage1_probe, "final_model": probe(model)}
    lap("evaluation", t0)
    seconds["evaluation"] += eval_seconds

    # The recipes that produced the final weights travel with them.
    stage1_recipe = {k: v for k, v in stage1.items() if k != "log"}
    training = {"stage1": stage1_recipe, "stage2": recipe_dict(cfg.stage2()), "n_pairs": cfg.n_pairs, "log": stage2_log}
    model.save_pretrained(out / "model", training=training)
    # The control, saved too, so that `vlv eval shapes --baseline` can score its captions beside the model's.
    baseline_training = {"stage2": recipe_dict(cfg.baseline()), "n_pairs": cfg.n_pairs, "log": baseline_log}
    baseline.save_pretrained(out / "baseline", training=baseline_training)
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
        "environment": environment(),
        "details": {
            "reader_on_clean_heldout": reader_check,
            "teacher": teacher_scores,
            "captions": caption_scores,
            "caption_exact_by_phase": [scores["exact"] for scores, _ in by_phase],
            "baseline_captions": baseline_scores,
            "reconstruction": recon_scores,
            # What the captioner's own encoder reconstructs (equal to the above unless phase 3 trained it).
            "reconstruction_by_caption_encoder": own_recon_scores,
            "phase3_denoising": cfg.phase3_denoising,
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
        originals=renders(heldout[:12]),
        reconstructions=recon[:12],
        captions=captions[:12],
        teacher_samples=teacher_samples[:12],
        teacher_scenes=heldout[:12],
        compositions=compositions,
        curves={"stage 1 (train loss)": stage1["log"], "stage 2": stage2_log, "baseline": baseline_log},
        ablations=ablation,
    )
    return metrics

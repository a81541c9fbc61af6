"""`vlv shapes controls`: the demo's claims under the controls a sceptical reviewer asks for.

- **seeds** — stage 2 and the paired-only baseline over several training seeds, the stage-1 encoder fixed: the seed
  draws the N pairs, initialises what stage 2 trains (ψ and the LLM; every part of the baseline) and orders the
  batches. Every seed is scored on the demo's one fixed set of held-out scenes, so the spread is training noise.
- **pairs** — at each N: VLV, the baseline at equal *stage-2* steps (the demo's) and the baseline at equal *total*
  optimizer steps (VLV's stage-1 steps + stage-2 steps), with the training FLOPs of each (`vlv.train.flops`).
- **composition** — stage-1 checkpoints (e.g. one trained on renders only, without the composition term): how often
  both objects of two spliced images come back, and the probe's spliced-z share.

Each number comes from a *cell* — one trained model's scores — written to OUT/cells/NAME.json as soon as it is done
and read back by a rerun (keyed by everything the cell depends on), so an interrupted run loses at most the cell in
progress and a rerun with more seeds or N only trains what is new. OUT/controls.json and OUT/controls.md hold the
tables.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from vlv.checkpoint import read_training
from vlv.model import VLV
from vlv.shapes import preset
from vlv.shapes.demo import (
    DemoConfig,
    composition_seed,
    demo_pairs,
    demo_reader,
    demo_stage1,
    heldout_scenes,
    pair_batches,
    run_stage2,
)
from vlv.shapes.evaluate import evaluate_captions, evaluate_composition
from vlv.shapes.stage1 import Stage1Probe, Stage1Recipe, recipe_of, stage1_batches
from vlv.train.flops import step_flops, training_flops
from vlv.train.recipes import CaptionerRecipe, autoencoder_of, recipe_dict


@dataclasses.dataclass(frozen=True)
class Controls:
    """What `vlv shapes controls` runs: the demo configuration and the controls around it."""

    demo: DemoConfig
    seeds: tuple[int, ...] = (0, 1, 2)
    pairs: tuple[int, ...] = (100, 1000, 10_000)
    stage1_runs: tuple[str, ...] = ()  # stage-1 checkpoints whose composition is measured


class Cells:
    """One JSON file per finished cell under `root`; a cell is recomputed only when its key changed."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def get(self, name: str, key: dict, compute: Callable[[Path], dict]) -> dict:
        """The cell's value: read back, or `compute(snapshot)` — snapshot: a file for the training state of a long
        cell, named after the key, so that an interrupted cell continues only with the settings it started with."""
        path = self.root / f"{name}.json"
        if path.is_file():
            cached = json.loads(path.read_text())
            if cached.get("key") == key:
                return cached["value"]
            tqdm.write(f"controls: {name} was computed for other settings; recomputing")
        tqdm.write(f"controls: computing {name}")
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        value = compute(self.root / f"{name}.{digest}.snapshot.pt")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, "value": value}, indent=2) + "\n")
        os.replace(tmp, path)  # a finished cell appears whole or not at all
        return value


def stage1_recipe(cfg: DemoConfig) -> Stage1Recipe:
    """The stage-1 recipe behind the demo's encoder: the committed one's record, or the one trained here."""
    if cfg.stage1_from is not None:
        return recipe_of(read_training(cfg.stage1_from))
    return cfg.stage1


def stage2_steps(recipe: CaptionerRecipe) -> int:
    return sum(phase.optim.steps for phase in recipe.phases)


def equal_total_steps(cfg: DemoConfig) -> int:
    """The optimizer steps VLV took in all: stage 1 then stage 2."""
    return stage1_recipe(cfg).steps + stage2_steps(cfg.stage2())


def flops_per_step(cfg: DemoConfig, teacher: str) -> dict[str, int]:
    """FLOPs of one training step of each kind the runs take, on a fresh model and a typical batch."""
    recipe = stage1_recipe(cfg)
    model = recipe.fresh_model(preset.config(teacher=teacher, seed=cfg.seed))
    flops = {}
    segments = {"stage1_plain": (recipe.plain, False), "stage1_compose": (recipe.compose, True)}
    for name, (seg, compose) in segments.items():
        if seg is not None:
            model.set_trainable(seg.trainable)
            batch = stage1_batches(recipe, compose=compose, size=model.config.teacher.image_size)(0)
            flops[name] = step_flops(autoencoder_of(model, seg), batch)
    # Stage 2 counted as if every step ran the encoder: phases 1–2 reuse a frozen encoder's output
    # (`Captioner.conditions`), so VLV's count errs high — the compute-matched baseline gets more, never less.
    batch = pair_batches(demo_pairs(cfg), cfg.batch_size, cfg.seed)(0)
    for phase in (*cfg.stage2().phases, *cfg.baseline().phases):
        model.set_trainable(phase.trainable)
        flops[f"stage2_{phase.name}"] = step_flops(model.captioner(denoising_weight=phase.denoising_weight), batch)
    model.set_trainable(())
    return flops


def run_flops(cfg: DemoConfig, per_step: dict[str, int], *, baseline_steps: int | None = None) -> dict[str, int]:
    """Training FLOPs of VLV (stage 1 + stage 2) and of a paired-only baseline of `baseline_steps` steps."""
    recipe = stage1_recipe(cfg)
    stage1 = [(recipe.plain.optim.steps, per_step["stage1_plain"])]
    if recipe.compose is not None:
        stage1.append((recipe.compose.optim.steps, per_step["stage1_compose"]))
    stage2 = [(p.optim.steps, per_step[f"stage2_{p.name}"]) for p in cfg.stage2().phases]
    steps = stage2_steps(cfg.baseline()) if baseline_steps is None else baseline_steps
    return {
        "vlv_stage1": training_flops(stage1),
        "vlv_stage2": training_flops(stage2),
        "vlv": training_flops(stage1 + stage2),
        "baseline": training_flops([(steps, per_step["stage2_baseline"])]),
    }


def run_controls(out: Path, controls: Controls, *, teacher: str = preset.TEACHER) -> dict:
    """Every control; returns controls.json's content (also written, with controls.md)."""
    cfg = controls.demo
    cells = Cells(out / "cells")
    heldout = heldout_scenes(cfg)  # one fixed evaluation set for every seed and N
    common = {"demo": recipe_dict(cfg), "teacher": Path(teacher).name, "eval_scenes": len(heldout)}

    def caption_scores(model: VLV) -> dict:
        scores, _ = evaluate_captions(model.eval(), heldout)
        return {"exact": scores["exact"], "attribute_accuracy": scores["attribute_accuracy"]}

    def vlv_cell(seed: int, n: int) -> dict:
        def compute(snapshot: Path) -> dict:
            run = dataclasses.replace(cfg, seed=seed)
            base = preset.config(teacher=teacher, seed=seed)
            model, _ = demo_stage1(base, cfg, out)
            run_stage2(model, run.stage2(), demo_pairs(run, n), seed, snapshot=snapshot)
            return caption_scores(model)

        return cells.get(f"vlv_seed{seed}_n{n}", {**common, "seed": seed, "n": n}, compute)

    def baseline_cell(seed: int, n: int, steps: int) -> dict:
        def compute(snapshot: Path) -> dict:
            run = dataclasses.replace(cfg, seed=seed)
            model = VLV(preset.config(teacher=teacher, seed=seed))
            run_stage2(model, run.baseline(steps), demo_pairs(run, n), seed, snapshot=snapshot)
            return caption_scores(model)

        key = {**common, "seed": seed, "n": n, "steps": steps}
        return cells.get(f"baseline{steps}_seed{seed}_n{n}", key, compute)

    reader = None  # the attribute reader, trained when a composition cell first needs it

    def composition_cell(path: str) -> dict:
        def compute(_: Path) -> dict:
            nonlocal reader
            reader = reader or demo_reader(cfg)
            model = VLV.from_pretrained(path, teacher=teacher).eval()
            probe = Stage1Probe(model, cfg.seed)(model)
            scores, _ = evaluate_composition(model, reader, cfg.composition_pairs, composition_seed(cfg))
            record = read_training(path) or {}
            steps = recipe_of(record).steps if "recipe" in record else None
            return {**scores, **probe, "stage1_steps": steps}

        name = "composition_" + Path(path).resolve().name
        return cells.get(name, {**common, "path": str(Path(path).resolve())}, compute)

    equal_stage2, equal_total = stage2_steps(cfg.baseline()), equal_total_steps(cfg)
    per_step = cells.get("flops_per_step", common, lambda _: flops_per_step(cfg, teacher))
    results: dict = {
        "eval_scenes": len(heldout),
        "n_pairs": cfg.n_pairs,
        "steps": {"vlv_stage1": stage1_recipe(cfg).steps, "vlv_stage2": equal_stage2, "equal_total": equal_total},
        "flops_per_step": per_step,
    }

    # Short cells first, then the long equal-total baselines (the demo's N first), so that an interrupted run has
    # finished the most per hour; the tables below then read every cell back.
    for path in controls.stage1_runs:
        composition_cell(path)
    for seed in controls.seeds:
        vlv_cell(seed, cfg.n_pairs), baseline_cell(seed, cfg.n_pairs, equal_stage2)
    for n in controls.pairs:
        vlv_cell(cfg.seed, n), baseline_cell(cfg.seed, n, equal_stage2)
    for n in sorted(controls.pairs, key=lambda n: n != cfg.n_pairs):
        baseline_cell(cfg.seed, n, equal_total)

    rows = []
    for seed in controls.seeds:
        vlv, base = vlv_cell(seed, cfg.n_pairs), baseline_cell(seed, cfg.n_pairs, equal_stage2)
        rows.append({"seed": seed, "vlv": vlv, "baseline": base})
    results["seeds"] = {"rows": rows, "summary": _summary(rows)}

    rows = []
    for n in controls.pairs:
        row = {
            "n_pairs": n,
            "vlv": vlv_cell(cfg.seed, n),
            "baseline_equal_stage2": baseline_cell(cfg.seed, n, equal_stage2),
            "baseline_equal_total": baseline_cell(cfg.seed, n, equal_total),
        }
        rows.append(row)
    results["pairs"] = {
        "rows": rows,
        "flops": {
            "equal_stage2": run_flops(cfg, per_step),
            "equal_total": run_flops(cfg, per_step, baseline_steps=equal_total),
        },
    }

    if controls.stage1_runs:
        results["composition"] = [{"stage1": p, **composition_cell(p)} for p in controls.stage1_runs]

    (out / "controls.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "controls.md").write_text(controls_markdown(results))
    return results


def _summary(rows: list[dict]) -> dict:
    """Mean and min–max over seeds of each score."""
    summary = {}
    for model in ("vlv", "baseline"):
        for metric in ("exact", "attribute_accuracy"):
            values = [r[model][metric] for r in rows]
            summary[f"{model}_{metric}"] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
    return summary


def controls_markdown(results: dict) -> str:
    """The tables of controls.json as Markdown."""
    steps, flops = results["steps"], results["pairs"]["flops"]
    lines = [f"Held-out scenes: {results['eval_scenes']} (the same for every row).", ""]
    if results["seeds"]["rows"]:
        s = results["seeds"]["summary"]
        lines += [
            f"Seeds of stage 2 and the baseline, N = {results['n_pairs']:,}, stage-1 encoder fixed:",
            "",
            "| seed | VLV exact | VLV attributes | baseline exact | baseline attributes |",
            "|---|---|---|---|---|",
        ]
        for r in results["seeds"]["rows"]:
            v, b = r["vlv"], r["baseline"]
            lines.append(
                f"| {r['seed']} | {v['exact']:.3f} | {v['attribute_accuracy']:.3f} | {b['exact']:.3f} | "
                f"{b['attribute_accuracy']:.3f} |"
            )

        def fmt(k: str) -> str:
            return f"{s[k]['mean']:.3f} ({s[k]['min']:.3f}–{s[k]['max']:.3f})"

        lines.append(
            f"| mean (min–max) | {fmt('vlv_exact')} | {fmt('vlv_attribute_accuracy')} | {fmt('baseline_exact')} | "
            f"{fmt('baseline_attribute_accuracy')} |"
        )
        lines.append("")
    if results["pairs"]["rows"]:

        def tflops(x: int) -> str:
            return f"{x / 1e12:.1f}"

        lines += [
            "Caption exact-scene accuracy (attribute accuracy) against the number of pairs N (seed 0). Steps are "
            "optimizer steps; FLOPs (10¹² FLOPs, forward + backward, counted) are the training compute of the whole "
            "run:",
            "",
            f"| N | VLV: {steps['vlv_stage1']:,} stage-1 + {steps['vlv_stage2']:,} stage-2 steps, "
            f"{tflops(flops['equal_stage2']['vlv'])} | baseline, {steps['vlv_stage2']:,} steps (equal stage 2), "
            f"{tflops(flops['equal_stage2']['baseline'])} | baseline, {steps['equal_total']:,} steps (equal total), "
            f"{tflops(flops['equal_total']['baseline'])} |",
            "|---|---|---|---|",
        ]
        for r in results["pairs"]["rows"]:
            cells = (r["vlv"], r["baseline_equal_stage2"], r["baseline_equal_total"])
            scores = " | ".join(f"{c['exact']:.3f} ({c['attribute_accuracy']:.3f})" for c in cells)
            lines.append(f"| {r['n_pairs']:,} | {scores} |")
        lines.append("")
    if results.get("composition"):
        lines += [
            "Composition of stage-1 encoders (two single-object images, z spliced, decoded and read back):",
            "",
            "| stage-1 checkpoint | steps | both present | first / second | z share | spliced-z share |",
            "|---|---|---|---|---|---|",
        ]
        for r in results["composition"]:
            lines.append(
                f"| {r['stage1']} | {r['stage1_steps'] or '?'} | {r['both_present']:.2f} | "
                f"{r['first_present']:.2f} / {r['second_present']:.2f} | {r['recovered']:.3f} | "
                f"{r['composition_recovered']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)

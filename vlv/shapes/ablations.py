"""`vlv demo --ablations`: caption exactness vs the amount of stage 1, after each progressive phase, and vs N (VLV
against the paired-only baseline), on the demo's held-out scenes."""

from __future__ import annotations

from pathlib import Path

from vlv.config import VLVConfig
from vlv.model import VLV
from vlv.shapes.demo import DemoConfig, demo_pairs, demo_stage1, run_stage2
from vlv.shapes.evaluate import evaluate_captions
from vlv.shapes.stage1 import Stage1Recipe, obtain_stage1, recipe_of, with_optim
from vlv.shapes.world import Scene


def run_ablations(
    out: Path, cfg: DemoConfig, base: VLVConfig, heldout: list[Scene], metrics: dict, stage1: dict
) -> dict:
    """The three ablation tables; `metrics` and `stage1` are the main run's (its rows are not trained twice)."""

    def stage1_row(record: dict, exact: float) -> dict:
        recipe, recovered = recipe_of(record), record["log"][-1]["recovered"]
        return {"stage1_steps": recipe.steps, "renders": recipe.renders, "recovered": recovered, "caption_exact": exact}

    def captions_exact(model: VLV) -> float:
        return evaluate_captions(model.eval(), heldout)[0]["exact"]

    rows_stage1 = []
    for steps in cfg.ablation_stage1_steps:  # renders only, no composition segment
        recipe = Stage1Recipe(with_optim(cfg.stage1.plain, steps=steps), seed=cfg.seed)
        cache = out / "ablations" / f"stage1_{steps}"
        model, record = obtain_stage1(base, recipe, None, cache, log_points=cfg.stage1_log_points)
        run_stage2(model, cfg.stage2(), demo_pairs(cfg), cfg.seed)
        rows_stage1.append(stage1_row(record, captions_exact(model)))
    rows_stage1.append(stage1_row(stage1, metrics["caption_exact"]))
    rows_pairs = []
    for n in cfg.ablation_pairs:
        if n == cfg.n_pairs:
            vlv_exact, base_exact = metrics["caption_exact"], metrics["baseline_caption_exact"]
        else:
            pairs = demo_pairs(cfg, n)
            model, _ = demo_stage1(base, cfg, out)
            run_stage2(model, cfg.stage2(), pairs, cfg.seed)
            vlv_exact = captions_exact(model)
            baseline = VLV(base)
            run_stage2(baseline, cfg.baseline(), pairs, cfg.seed)
            base_exact = captions_exact(baseline)
        rows_pairs.append({"n_pairs": n, "vlv_caption_exact": vlv_exact, "baseline_caption_exact": base_exact})
    phases = [{"phase": i + 1, "caption_exact": e} for i, e in enumerate(metrics["details"]["caption_exact_by_phase"])]
    return {"stage1_amount": rows_stage1, "phases": phases, "n_pairs": rows_pairs}

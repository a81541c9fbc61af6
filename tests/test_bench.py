"""The benchmark's measuring tools (`bench/`): what they report must follow what happened."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import harness
from bench.stage1_efficiency import (
    PAPER_BUDGET,
    Run,
    _build,
    against,
    demo_run,
    measure,
    measure_step_flops,
    ours_run,
    paper_runs,
    pooled,
    run_key,
    run_seeds,
)
from vlv.shapes import preset
from vlv.train.loop import OptimConfig
from vlv.train.recipes import AutoencoderRecipe

ROOT = Path(__file__).resolve().parents[1]


def test_compare_reports_ours_over_baseline_for_rates_and_the_inverse_for_costs():
    assert harness.compare(30.0, 10.0, "samples/s")["ratio"] == 3.0
    assert harness.compare(2.0, 8.0, "FLOPs", higher_is_better=False)["ratio"] == 4.0


def test_the_paired_ratio_is_taken_round_by_round():
    # Round 2 ran on a machine twice as slow for both: the per-round ratios stay 2, the ratio of medians does not.
    ours, baseline = harness.summary([1.0, 2.0, 1.0]), harness.summary([2.0, 4.0, 2.0])
    assert harness.compare_rates(ours, baseline, "x/s")["paired_ratio"]["values"] == [2.0, 2.0, 2.0]
    # ours does 16× the work per call
    assert harness.compare_rates(ours, baseline, "x/s", work=(16, 1))["paired_ratio"]["median"] == 32.0
    drift = harness.summary([1.0, 1.0, 3.0]), harness.summary([3.0, 9.0, 9.0])
    paired = harness.compare_rates(*drift, "x/s")["paired_ratio"]
    assert paired["median"] == 3.0 and drift[1]["median"] / drift[0]["median"] == 9.0


def test_interleaved_runs_the_cases_in_turn_after_their_warm_up():
    calls = []
    times = harness.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["a", "b"] * 4  # one warm-up each, then a, b, a, b, …
    assert len(times["a"]["values"]) == 3 and times["a"]["min"] <= times["a"]["median"] <= times["a"]["max"]


def test_peak_memory_sees_a_temporary_allocation_and_not_its_absence():
    # In a fresh process, as the bench measures: a long-lived one may serve the allocation from pages it kept.
    code = (
        "import torch; from bench.harness import peak_memory\n"
        "def allocate():\n"
        "    x = torch.ones(64 * 2**20 // 4)  # 64 MiB, freed on return\n"
        "    x.add_(1)\n"
        "print(peak_memory(allocate), peak_memory(lambda: None))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    allocated, nothing = map(int, out.stdout.split())
    assert allocated > 48 * 2**20, allocated
    assert nothing < 16 * 2**20, nothing


def test_a_stopped_efficiency_run_continues_and_a_finished_one_is_read_back(tmp_path):
    recipe = AutoencoderRecipe(OptimConfig(steps=3, lr=1e-3, warmup_steps=1), 4, preset.STAGE1_PARTS, 1)
    stopped = measure(Run("tiny", recipe), tmp_path, probe_every=2, stop_after=2)
    assert not stopped["finished"] and stopped["steps"] == 2 and stopped["flops"] == 2 * stopped["flops_per_step"]
    assert (tmp_path / "tiny.pt").exists() and not (tmp_path / "tiny.json").exists()
    assert measure(Run("tiny", recipe), tmp_path, probe_every=2, stop_after=2) == stopped  # already there: no step
    result = measure(Run("tiny", recipe), tmp_path, probe_every=2)  # continues from step 2
    assert [p["step"] for p in result["curve"]] == [2, 3] and result["steps"] == 3
    assert result["flops"] == 3 * result["flops_per_step"] > 0 and result["renders"] == 12
    assert not (tmp_path / "tiny.pt").exists()  # the snapshot goes once the result is written
    assert json.loads((tmp_path / "tiny.json").read_text())["value"] == result
    assert measure(Run("tiny", recipe), tmp_path, probe_every=2) == result  # read back, not trained again


def test_a_run_whose_vision_side_trains_late_counts_its_frozen_steps_cheaper_and_leaves_that_side_unchanged(tmp_path):
    recipe = AutoencoderRecipe(OptimConfig(steps=3, lr=1e-3, warmup_steps=1), 4, preset.STAGE1_PARTS, 1)
    late = Run("late", recipe, vision_from=2)
    with pytest.raises(ValueError, match="multiple"):
        measure(late, tmp_path, probe_every=3)
    stopped = measure(late, tmp_path, probe_every=2, stop_after=2)
    params = torch.load(tmp_path / "late.pt")["trainer"]["params"]
    init = _build(late, preset.TEACHER, 0, "cpu")[0].encoder.state_dict()  # the same init
    tower = {k.removeprefix("encoder."): v for k, v in params.items() if "vision_tower" in k}
    assert tower and all(torch.equal(v, init[k]) for k, v in tower.items())  # frozen for 2 steps
    assert not torch.equal(params["encoder.queries"], init["queries"])  # while the rest trained
    assert 0 < stopped["flops"] < 2 * stopped["flops_per_step"]  # no backward through the vision side
    frozen = stopped["flops"] / 2
    result = measure(late, tmp_path, probe_every=2)  # step 3 trains the vision side too
    assert result["flops"] == 2 * frozen + result["flops_per_step"]


def test_the_efficiency_ratio_is_exact_when_the_best_baseline_reached_and_a_bound_when_a_run_fell_short_first():
    ours = {"reached": True, "flops": 10.0}
    reached, short = {"reached": True, "flops": 40.0}, {"reached": False, "flops": 30.0}
    assert against(ours, [reached]) == {"ours": 10.0, "baseline": 40.0, "unit": "FLOPs to 0.90", "ratio": 4.0}
    # a run stopped at 30 without reaching 0.90 might still reach it before 40: only "> 3×" is known
    assert against(ours, [reached, short]) == against(ours, [short])
    assert against(ours, [short]) == {"ours": 10.0, "baseline": 30.0, "unit": "FLOPs to 0.90", "ratio": 3.0,
                                      "bound": True}  # fmt: skip
    # one that fell short after more compute than the best run needed changes nothing
    assert "bound" not in against(ours, [reached, {"reached": False, "flops": 50.0}])
    assert against({"reached": False, "flops": 99.0}, [reached])["ratio"] is None


def test_pooled_efficiency_sums_the_seeds_compute_and_keeps_a_bound_or_a_miss():
    exact = {0: against({"reached": True, "flops": 10.0}, [{"reached": True, "flops": 40.0}]),
             1: against({"reached": True, "flops": 20.0}, [{"reached": True, "flops": 20.0}])}  # fmt: skip
    result = pooled(exact)
    assert (result["ours"], result["baseline"], result["ratio"]) == (30.0, 60.0, 2.0)  # not the mean ratio, 2.5
    assert result["median_ratio"] == 2.5 and result["geomean_ratio"] == pytest.approx(2.0) and result["min_ratio"] == 1
    assert "bound" not in result and result["per_seed"]["1"] == exact[1]
    bounded = pooled({**exact, 2: against({"reached": True, "flops": 10.0}, [{"reached": False, "flops": 30.0}])})
    assert bounded["bound"] and bounded["ratio"] == 90.0 / 40.0  # a lower bound: seed 2 needs more than 30
    missed = pooled({**exact, 2: against({"reached": False, "flops": 99.0}, [{"reached": True, "flops": 30.0}])})
    assert missed["ratio"] is None and missed["ours"] is None and "median_ratio" not in missed
    with pytest.raises(ValueError, match="seed"):
        run_seeds("runs/eff", [0, 1])  # one folder for every seed would mix their runs


def test_a_centered_start_puts_z_mean_over_the_first_batch_at_the_empty_prompt_and_only_moves_the_offset():
    plain = Run("z0", ours_run().recipe, z_offset=True)
    centered = dataclasses.replace(plain, name="centered", z_centered=True)
    (model, _, batches), (other, _, _) = (
        _build(centered, preset.TEACHER, 0, "cpu"),
        _build(plain, preset.TEACHER, 0, "cpu"),
    )
    empty = model.conditioner.prompt_embeddings([""])[0][:77]
    with torch.no_grad():
        z, z_plain = model.encoder.eval()(batches(0)["images"]), other.encoder.eval()(batches(0)["images"])
    assert torch.allclose(z.mean(0), empty, atol=1e-5)
    assert (z_plain.mean(0) - empty).std() > 0.1  # without it, φ's common output sits far from the empty prompt
    assert torch.allclose(z - z.mean(0), z_plain - z_plain.mean(0), atol=1e-5)  # what varies with the image is kept
    key = run_key(centered, preset.TEACHER, 0, 50)
    assert key["z_centered"] and "z_centered" not in run_key(plain, preset.TEACHER, 0, 50)


def test_the_papers_runs_get_at_least_four_times_the_former_demo_recipes_counted_compute():
    demo, paper = demo_run(), paper_runs(PAPER_BUDGET)[0]
    assert paper.budget == PAPER_BUDGET
    demo_compute = demo.budget * measure_step_flops(demo)
    # 4.27×: the former demo recipe's 4 copies of a render now share the teacher's keys and values (123.3 TFLOP)
    assert 4 * demo_compute <= PAPER_BUDGET * measure_step_flops(paper) < 4.3 * demo_compute


def test_attribute_probe_labels_each_quadrant_and_ignores_empty_ones():
    from bench.attribute_probe import IGNORE, labels
    from vlv.shapes.world import Scene, ShapeObject

    scene = Scene((ShapeObject("top right", "large", "blue", "triangle"),))
    y = labels([scene])  # quadrants in POSITIONS order: top left, top right, bottom left, bottom right
    assert y["occupied"].tolist() == [[0, 1, 0, 0]]
    assert y["size"].tolist() == [[IGNORE, 1, IGNORE, IGNORE]]  # SIZES = (small, large)
    assert y["color"].tolist() == [[IGNORE, 2, IGNORE, IGNORE]]  # COLORS = (red, green, blue, yellow)
    assert y["shape"].tolist() == [[IGNORE, 2, IGNORE, IGNORE]]  # SHAPES = (circle, square, triangle)


def test_the_committed_teacher_follows_its_caption_a_wrong_attribute_costs_more_than_none_at_low_noise():
    from bench.attribute_probe import swapped, teacher_penalties
    from vlv.model import VLV
    from vlv.shapes import preset
    from vlv.shapes.world import Scene, ShapeObject, sample_scenes

    scene = Scene((ShapeObject("top left", "small", "yellow", "triangle"),))
    assert swapped(scene, "shape").caption == "a small yellow circle at the top left"  # the next value, wrapping
    assert swapped(scene, "color").caption == "a small red triangle at the top left"

    model = VLV(preset.config()).eval()
    low, high = teacher_penalties(model, sample_scenes(8, seed=5, split="heldout"), band=500, noises=1)
    assert (low["t"], high["t"]) == (250, 750)
    for name in ("shape", "color", "size"):
        assert low[name] > low["empty"] > low["true"]  # at low noise a wrong caption is worse than none
        assert high["empty"] > high[name] > high["true"]  # at high noise it still carries what it gets right


def test_caption_parts_times_every_part_the_caption_path_runs_and_leaves_no_hooks(tiny_model):
    import torch

    from bench.caption_parts import parts, timed_pass

    pixels = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    seconds, faults = timed_pass(tiny_model, pixels, 2)
    assert set(seconds) == {*parts(tiny_model), "generation and the rest", "total"} and faults >= 0
    # each hooked module ran inside `VLV.caption` (a part it no longer runs would read 0), all within the total
    assert all(seconds[name] > 0 for name in parts(tiny_model))
    assert 0 <= sum(seconds[name] for name in parts(tiny_model)) <= seconds["total"]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in parts(tiny_model).values())

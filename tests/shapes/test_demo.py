"""`vlv demo --quick`: the whole method at smoke size against the committed teacher, with its own thresholds."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import vlv
from bench.stage1_efficiency import ours_run
from vlv.checkpoint import read_training
from vlv.cli import main
from vlv.loading import CheckpointMismatchError
from vlv.model import VLV
from vlv.shapes import preset
from vlv.shapes.demo import DemoConfig, heldout_scenes
from vlv.shapes.evaluate import evaluate_captions
from vlv.shapes.stage1 import (
    STAGE1_COMMITTED,
    STAGE1_FROM_SCRATCH,
    Stage1Probe,
    obtain_stage1,
    recipe_of,
    stage1_record,
)

KEYS = {
    "teacher_attribute_accuracy",
    "caption_exact",
    "caption_attribute_accuracy",
    "reconstruction_attribute_agreement",
    "shapes_fid",
    "composition_both_present",
    "baseline_caption_exact",
    "n_pairs",
    "seconds_total",
    "seconds_by_phase",
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--ablations", "--out", str(out)]) == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_quick_demo_writes_metrics_report_and_model(quick_run):
    out, metrics = quick_run
    assert KEYS <= metrics.keys()
    for key in KEYS - {"shapes_fid", "n_pairs", "seconds_total", "seconds_by_phase"}:
        assert 0 <= metrics[key] <= 1, key
    assert metrics["n_pairs"] == DemoConfig.quick().n_pairs
    assert set(metrics["seconds_by_phase"]) == {"attribute_reader", "stage1", "stage2", "baseline", "evaluation"}
    composition = metrics["details"]["composition"]  # both present implies each present
    assert composition["both_present"] == metrics["composition_both_present"]
    assert composition["both_present"] <= min(composition["first_present"], composition["second_present"])
    html = (out / "report.html").read_text()
    assert html.count("<img") >= 30 and "caption_exact" in html
    env = metrics["environment"]  # what the last digits depend on besides code and seed
    assert env["threads"] == torch.get_num_threads() and env["torch"] == torch.__version__ and env["cpu"]


def test_the_saved_model_captions_as_the_demo_scored_it(quick_run):
    """The saved final model, reloaded, gives exactly the held-out caption scores the demo reported."""
    out, metrics = quick_run
    model = vlv.load(out / "model")
    scores, captions = evaluate_captions(model, heldout_scenes(DemoConfig.quick()))
    assert scores == metrics["details"]["captions"]
    assert len(captions) == metrics["details"]["eval_scenes"]
    assert "decoder" not in model.built_parts()  # captioning never built the UNet
    training = read_training(out / "model")  # the recipes that produced the weights are saved beside them
    assert [p["name"] for p in training["stage2"]["phases"]] == ["mlp", "llm", "encoder"]
    assert training["n_pairs"] == DemoConfig.quick().n_pairs
    config = json.loads((out / "model/config.json").read_text())
    # Everything the demo trained is stored: the encoder, ψ, the LLM (it has no source to refer to), and the stage-1
    # BART that phase 3 trained on (the kept stage-1 encoder shares every other tensor with the encoder).
    assert set(config["weights"]) == {f"encoder.{p}" for p in ("vision", "language_model", "queries", "projection")} | {
        "caption_decoder.projector",
        "caption_decoder.llm",
        "stage1_encoder.language_model",
    }


def test_the_saved_model_reconstructs_with_its_stage1_encoder(quick_run):
    """One checkpoint does both: the final model embeds (for reconstruction and composition) exactly as the stage-1
    model did, while its captioner's encoder moved on in phase 3."""
    out, _ = quick_run
    final, stage1 = vlv.load(out / "model"), vlv.load(out / "stage1")
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(final.embed(images), stage1.embed(images))
    assert not torch.allclose(final.encoder(images), stage1.encoder(images))
    assert torch.equal(final.reconstruct(images[:2], steps=2), stage1.reconstruct(images[:2], steps=2))


def test_stage1_trained_again_in_the_same_process_is_the_same_checkpoint(quick_run, tmp_path):
    """Same machine, same seed: stage 1 trained again here (not read from the demo's cache) writes the demo's stage-1
    weights bit for bit and logs the same losses and probes. (The controls below train stage 2 and the baseline
    again and reproduce the demo's scores, and evaluate composition with a reader trained again.)"""
    out, _ = quick_run
    cfg = DemoConfig.quick()
    config = preset.config(seed=cfg.seed)
    _, record = obtain_stage1(config, cfg.stage1, None, tmp_path / "stage1", log_points=cfg.stage1_log_points)
    first, again = (load_file(d / "stage1" / "model.safetensors") for d in (out, tmp_path))
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)

    def untimed(entries):
        return [{k: v for k, v in e.items() if k != "seconds"} for e in entries]

    assert untimed(record["log"]) == untimed(read_training(out / "stage1")["log"])


def test_quick_demo_learns(quick_run):
    out, metrics = quick_run
    details = metrics["details"]
    assert details["reader_on_clean_heldout"]["attribute_accuracy"] >= 0.95  # the evaluator itself is reliable
    assert metrics["teacher_attribute_accuracy"] >= 0.85  # the committed teacher draws what captions say
    logs = json.loads((out / "logs.json").read_text())
    # At smoke size stage 1 only leaves its initial mismatch (z's held-out gain starts after ~150 full-size
    # steps); stage 2 must already fit its pairs.
    assert logs["stage1"][-1]["loss"] < 0.7 * logs["stage1"][0]["loss"]
    assert logs["stage2"][-1]["loss"] < 0.5 * logs["stage2"][0]["loss"]
    assert logs["baseline"][-1]["loss"] < 0.5 * logs["baseline"][0]["loss"]
    assert list(dict.fromkeys(e["phase"] for e in logs["stage2"])) == ["mlp", "llm", "encoder"]


def test_ablations_cover_stage1_amount_phases_and_n(quick_run):
    out, metrics = quick_run
    cfg = DemoConfig.quick()
    ablations = json.loads((out / "ablations.json").read_text())
    steps = [r["stage1_steps"] for r in ablations["stage1_amount"]]
    assert steps == [*cfg.ablation_stage1_steps, cfg.stage1.steps]
    assert ablations["stage1_amount"][-1]["caption_exact"] == metrics["caption_exact"]
    assert [r["phase"] for r in ablations["phases"]] == [1, 2, 3]
    assert ablations["phases"][-1]["caption_exact"] == metrics["caption_exact"]  # phase 3 is the final model
    rows = {r["n_pairs"]: r for r in ablations["n_pairs"]}
    assert list(rows) == list(cfg.ablation_pairs)
    assert rows[cfg.n_pairs]["baseline_caption_exact"] == metrics["baseline_caption_exact"]
    for r in ablations["n_pairs"]:
        assert 0 <= r["vlv_caption_exact"] <= 1 and 0 <= r["baseline_caption_exact"] <= 1
    html = (out / "report.html").read_text()
    assert "Ablations" in html and "caption exact vs N pairs" in html


def test_stage1_checkpoint_reloads_exactly_and_rejects_a_mismatch(quick_run, tmp_path):
    out, _ = quick_run
    fresh = VLV(preset.config(seed=1))  # a different initialisation …
    cached = vlv.load(out / "stage1")  # … so that this encoder must come from the file
    probe_images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(fresh.embed(probe_images), cached.embed(probe_images))
    record = read_training(out / "stage1")
    # the held-out probe of the reloaded encoder equals the one logged at the end of training
    probe = Stage1Probe(cached, record["recipe"]["seed"])
    assert probe(cached)["loss_z"] == pytest.approx(record["log"][-1]["loss_z"], rel=1e-5)
    (tmp_path / "bad").mkdir()
    for name in ("config.json", "training.json"):
        (tmp_path / "bad" / name).write_text((out / "stage1" / name).read_text())
    state = load_file(out / "stage1" / "model.safetensors")
    state.pop(sorted(state)[0])
    save_file(state, tmp_path / "bad" / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        vlv.load(tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="config.json"):
        vlv.load(tmp_path)


def test_committed_encoder_loads_and_reproduces_its_record():
    """`make demo` starts from this checkpoint: it must load strictly and be the encoder its record describes."""
    assert DemoConfig.full().stage1_from == preset.ENCODER
    model = vlv.load(preset.ENCODER)
    assert model.resolved_source("teacher") == str(Path(preset.TEACHER).resolve())  # relative to the checkpoint
    record = read_training(preset.ENCODER)
    assert recipe_of(record) == STAGE1_COMMITTED  # trained by `vlv shapes train-encoder` with its defaults
    last = record["log"][-1]
    probe = Stage1Probe(model, record["recipe"]["seed"])(model)
    assert probe["loss_z"] == pytest.approx(last["loss_z"], rel=1e-4)
    assert last["recovered"] >= 0.85  # z recovers most of what the true caption gives the teacher
    assert probe["loss_composed"] == pytest.approx(last["loss_composed"], rel=1e-4)
    assert last["composition_recovered"] >= 0.85  # so does the spliced z of two images, for their union


def test_from_scratch_stage1_is_the_efficiency_cases_ours_and_reads_back_from_its_record():
    """`vlv demo --from-scratch` reuses its cached stage 1 only when the record reads back as the same recipe."""
    plain, compose = STAGE1_FROM_SCRATCH.plain, STAGE1_FROM_SCRATCH.compose
    run = ours_run()
    ours = run.recipe  # the bench's measured recipe: the renders segment is it, shortened
    assert plain == dataclasses.replace(ours, optim=dataclasses.replace(ours.optim, steps=400))
    assert (ours.optim.betas, ours.optim.grad_clip, ours.optim.ema_decay) == ((0.9, 0.95), 0.1, 0.95)
    assert (ours.noises_per_image, ours.timesteps, ours.timestep_logit_normal) == (2, "stratified", (-0.5, 1.0))
    assert ours.optim.lr_scale("encoder.florence.vision_tower.convs.0.proj.weight") == 0.5
    assert ours.optim.lr_scale("encoder.florence.language_model.model.shared.weight") == 1.0
    assert STAGE1_FROM_SCRATCH.empty_prompt_offset and run.z_offset and run.open_cross_attention  # the same start
    assert compose.optim == dataclasses.replace(ours.optim, steps=1200, lr=1e-3)
    record = json.loads(json.dumps(stage1_record(STAGE1_FROM_SCRATCH, "teacher")))
    assert record == stage1_record(STAGE1_FROM_SCRATCH, "teacher")  # the cache check compares these
    assert recipe_of(record) == STAGE1_FROM_SCRATCH


def test_eval_shapes_scores_a_model_and_a_baseline(tmp_path):
    """`vlv eval shapes`: every protocol's numbers, in JSON and Markdown (here on the committed stage-1 checkpoint,
    whose caption decoder is untrained, as both model and baseline: the numbers are not the point)."""
    from vlv.shapes.vqa import train_vqa_reader

    reader = train_vqa_reader(tmp_path / "vqa_reader", steps=5, seed=0, batch_size=8, blocks=1)
    args = ["eval", "shapes", "--model", preset.ENCODER, "--baseline", preset.ENCODER]
    args += ["--scenes", "8", "--vqa-reader", str(reader), "--out", str(tmp_path / "eval")]  # the committed reader
    assert main(args) == 0
    results = json.loads((tmp_path / "eval/results.json").read_text())
    assert results["scenes"] == 8
    assert set(results["caption_to_image"]) == set(results["vqa"]) == {"ground_truth", "vlv", "baseline"}
    assert set(results["captions"]) == {"vlv", "baseline"}
    for source in results["vqa"].values():
        assert 0 <= source["0_shot"] <= 1 and 0 <= source["2_shot"] <= 1
    assert results["reconstruction"]["shapes_fid"] >= 0 and 0 <= results["reconstruction"]["attribute_agreement"] <= 1
    assert "| reconstruction / shapes_fid |" in (tmp_path / "eval/results.md").read_text()


def test_controls_reproduce_the_demo_count_compute_and_keep_finished_cells(quick_run):
    """`vlv shapes controls`: its seed-0 cells are the demo's own runs (equal numbers), the equal-total baseline
    takes stage-1 + stage-2 steps with counted FLOPs, and a rerun reads finished cells instead of training."""
    from vlv.shapes.controls import Controls, run_controls

    out, metrics = quick_run
    cfg = DemoConfig.quick()
    plan = Controls(cfg, seeds=(0,), pairs=(cfg.n_pairs,), stage1_runs=(str(out / "stage1"),))
    results = run_controls(out, plan)  # the demo's cached stage 1 (OUT/stage1) is reused
    seed0 = results["seeds"]["rows"][0]
    demo_scores = {"exact": metrics["caption_exact"], "attribute_accuracy": metrics["caption_attribute_accuracy"]}
    assert seed0["vlv"] == demo_scores
    assert seed0["baseline"]["exact"] == metrics["baseline_caption_exact"]

    steps, per_step = results["steps"], results["flops_per_step"]
    assert steps == {"vlv_stage1": 30, "vlv_stage2": 60, "equal_total": 90}
    flops = results["pairs"]["flops"]
    assert flops["equal_total"]["baseline"] == 90 * per_step["stage2_baseline"]
    assert flops["equal_stage2"]["baseline"] == 60 * per_step["stage2_baseline"]
    assert flops["equal_stage2"]["vlv"] == 20 * per_step["stage1_plain"] + 10 * per_step["stage1_compose"] + 20 * (
        per_step["stage2_mlp"] + per_step["stage2_llm"] + per_step["stage2_encoder"]
    )
    # a phase that trains more parts pays for more gradients; the composition step denoises more images
    assert per_step["stage2_mlp"] < per_step["stage2_llm"] < per_step["stage2_encoder"] <= per_step["stage2_baseline"]
    row = results["pairs"]["rows"][0]
    assert row["vlv"] == seed0["vlv"] and row["baseline_equal_stage2"] == seed0["baseline"]
    assert "90 steps (equal total)" in (out / "controls.md").read_text()
    # the stage-1 checkpoint composes as the demo's final model does (it embeds with that very encoder)
    (composition,) = results["composition"]
    assert composition["both_present"] == metrics["composition_both_present"]
    assert composition["recovered"] == metrics["details"]["stage1_probe"]["stage1_model"]["recovered"]
    assert composition["stage1_steps"] == 30

    cell = out / "cells" / f"baseline90_seed0_n{cfg.n_pairs}.json"
    stored = json.loads(cell.read_text())
    stored["value"]["exact"] = 0.5  # a rerun must read it back, not train again
    cell.write_text(json.dumps(stored))
    again = run_controls(out, plan)
    assert again["pairs"]["rows"][0]["baseline_equal_total"]["exact"] == 0.5

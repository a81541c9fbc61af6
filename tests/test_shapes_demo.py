"""`vlv demo --quick`: the whole method at smoke size against the committed teacher, with its own thresholds."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import vlv
from vlv.cli import main
from vlv.config import SHAPES_ENCODER, preset
from vlv.data.shapes import parse_caption, render_batch, sample_compositions, sample_scenes
from vlv.loading import CheckpointMismatchError
from vlv.model import VLV
from vlv.shapes_demo import (
    ENCODER_WEIGHTS,
    STAGE1_COMMITTED,
    STAGE1_RECORD,
    DemoConfig,
    composition_probe,
    load_stage1,
    stage1_config_of,
    stage1_probe,
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
    model = vlv.load(out / "model")
    scenes = sample_scenes(4, seed=0, split="heldout")
    captions = model.caption(torch.from_numpy(render_batch(scenes)))
    assert len(captions) == 4 and all(isinstance(c, str) for c in captions)
    assert all(parse_caption(c) is not None for c in captions)  # parsing never raises, whatever was generated


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
    assert [e["phase"] for e in logs["stage2"]][:: len(logs["stage2"]) // 3] == [1, 2, 3]


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


def _shapes_model(seed: int = 0) -> VLV:
    torch.manual_seed(seed)
    return VLV(preset("shapes"))


def test_stage1_cache_reloads_exactly_and_rejects_a_mismatch(quick_run, tmp_path):
    out, _ = quick_run
    model = _shapes_model(seed=1)  # a different initialisation: everything must come from the file
    record = load_stage1(model, out / "stage1")
    probe = sample_scenes(32, seed=DemoConfig.quick().stage1.seed + 202, split="heldout")
    # the held-out probe of the reloaded encoder equals the one logged at the end of training
    assert stage1_probe(model, probe)["loss_z"] == pytest.approx(record["log"][-1]["loss_z"], rel=1e-5)
    state = load_file(out / "stage1" / ENCODER_WEIGHTS)
    state.pop(sorted(state)[0])
    (tmp_path / "bad").mkdir()
    save_file(state, tmp_path / "bad" / ENCODER_WEIGHTS)
    (tmp_path / "bad" / STAGE1_RECORD).write_text((out / "stage1" / STAGE1_RECORD).read_text())
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        load_stage1(_shapes_model(), tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="no stage-1 encoder"):
        load_stage1(_shapes_model(), tmp_path)


def test_committed_encoder_loads_and_reproduces_its_record():
    """`make demo` starts from this encoder: it must load strictly into the shapes preset and be the one recorded."""
    assert DemoConfig.full().stage1_from == SHAPES_ENCODER
    model = _shapes_model(seed=1)
    record = load_stage1(model, Path(SHAPES_ENCODER))
    assert stage1_config_of(record) == STAGE1_COMMITTED  # trained by `vlv shapes train-encoder` with its defaults
    probe = sample_scenes(32, seed=record["stage1"]["seed"] + 202, split="heldout")
    last = record["log"][-1]
    assert stage1_probe(model, probe)["loss_z"] == pytest.approx(last["loss_z"], rel=1e-4)
    assert last["recovered"] >= 0.85  # z recovers most of what the true caption gives the teacher
    triples = sample_compositions(32, seed=record["stage1"]["seed"] + 303, split="heldout")
    composed = composition_probe(model, triples)
    assert composed["loss_composed"] == pytest.approx(last["loss_composed"], rel=1e-4)
    assert last["composition_recovered"] >= 0.85  # so does the spliced z of two images, for their union

"""LoRA on the LLM in stage 2 (`vlv train captioner --lora-rank R`): what trains, the merge, the checkpoints.

A LoRA phase trains ψ and the adapters while the LLM's weights stay as they were; at the phase end the adapters are
folded in (W + (alpha / rank)·B·A) and the LLM is a plain Qwen2ForCausalLM again, so OUT/final is an ordinary
checkpoint. Mid-phase, model/ holds the base weights and trainer.pt the adapters: resume is exact.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import Qwen2ForCausalLM

import vlv
from tests.conftest import reset_accelerate_state
from tests.test_run import write_images
from vlv.captioner import LORA_TARGETS, LoraSettings, is_adapter_key
from vlv.cli import main
from vlv.model import VLV
from vlv.presets import preset
from vlv.train.loop import OptimConfig, Trainer
from vlv.train.recipes import PHASE_PARTS

RANK, ALPHA = 4, 8.0  # scale alpha / rank = 2
LORA = {"rank": RANK, "alpha": ALPHA, "dropout": 0.0}  # the settings as the run records them (alpha: 2 × rank)
# The three phases, LoRA in llm and encoder; checkpoints at run steps 1 (mlp done), 3 (llm, 2 of its 3 steps),
# 4 (llm done), 6 (encoder, 2 of 3) and 7, all kept.
ALL_PHASES = ("--lora-rank", str(RANK), "--steps", "1,3,3", "--save-every", "2", "--keep", "10", "--preview", "0")


def run_cli(args: list[str]) -> int:
    """`vlv …` in this process; accelerate keeps its state per process, so it is reset after each run."""
    try:
        return main(args)
    finally:
        reset_accelerate_state()


def captioner_args(init: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "captioner", "--init", str(init), "--data", str(data), "--out", str(out), "--seed", "1",
            "--num-workers", "0", "--batch-size", "2", *extra]  # fmt: skip


def llm_weights(directory: Path) -> dict[str, torch.Tensor]:
    state = load_file(directory / "model.safetensors")
    return {k: v for k, v in state.items() if k.startswith("caption_decoder.llm.")}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    write_images(folder, 8)
    return folder


@pytest.fixture(scope="module")
def init(tmp_path_factory) -> Path:
    """A tiny stage-1 checkpoint: the encoder and the teacher, no caption decoder (stage 1 never builds it)."""
    directory = tmp_path_factory.mktemp("stage1")
    model = VLV(preset("tiny"))
    model.encoder  # noqa: B018 — build it so the checkpoint stores it
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, images, init) -> Path:
    """An uninterrupted run of `ALL_PHASES`."""
    out = tmp_path_factory.mktemp("lora_all")
    assert run_cli(captioner_args(init, images, out, *ALL_PHASES)) == 0
    return out


def test_a_lora_phase_trains_psi_and_the_adapters_and_merges_them_into_a_plain_llm():
    model = VLV(preset("tiny"))
    model.set_trainable(PHASE_PARTS["llm"], lora=LoraSettings(RANK, ALPHA))
    llm = model.caption_decoder.llm
    layers = llm.config.num_hidden_layers
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    adapters = [n for n in trained if is_adapter_key(n)]
    assert len(adapters) == 2 * len(LORA_TARGETS) * layers  # A and B on every projection of every layer
    others = [n for n in trained if n not in adapters]
    assert others and all(n.startswith("parts.caption_decoder.projector.") for n in others)  # and ψ, nothing else
    base = {k: v.clone() for k, v in model.caption_decoder.base_state_dict().items() if k.startswith("llm.")}
    assert base.keys() == {"llm." + k for k in Qwen2ForCausalLM(llm.config).state_dict()}

    size = model.config.teacher.image_size
    batch = {"images": torch.rand(2, 3, size, size), "captions": ["a small red circle", "a blue square"]}
    Trainer(model.captioner(), OptimConfig(steps=2, lr=1e-2), desc="lora").run(lambda step: batch)

    after = model.caption_decoder.base_state_dict()
    assert all(torch.equal(after[k], base[k]) for k in base), "the LLM's own weights moved"
    wrapped = {n: m for n, m in llm.named_modules() if n.rsplit(".", 1)[-1] in LORA_TARGETS}
    assert any(m.lora_B["default"].weight.abs().max() > 0 for m in wrapped.values()), "the adapters did not train"
    expected = {
        n: m.base_layer.weight + ALPHA / RANK * m.lora_B["default"].weight @ m.lora_A["default"].weight
        for n, m in wrapped.items()
    }
    model.merge_lora()
    model.set_trainable(())
    for name, weight in expected.items():
        layer = llm.get_submodule(name)
        assert type(layer) is nn.Linear
        torch.testing.assert_close(layer.weight, weight)
    assert llm.state_dict().keys() == Qwen2ForCausalLM(llm.config).state_dict().keys()
    assert not hasattr(llm, "peft_config") and model.caption_decoder.lora is None
    assert "caption_decoder.llm" in model.stored_parts()  # trained now: saved with the model


def test_phase_llm_with_lora_writes_a_plain_checkpoint_that_captions(tmp_path, images, init):
    out = tmp_path / "run"
    lora = ("--lora-rank", str(RANK), "--phase", "llm", "--steps", "3", "--save-every", "2", "--preview", "1")
    assert run_cli(captioner_args(init, images, out, *lora)) == 0
    model = vlv.load(out / "final")  # strict, and without peft's renamed keys
    assert "caption_decoder.llm" in model.config.weights
    captions = model.caption(torch.rand(2, 3, 16, 16))
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    untrained = vlv.load(init).caption_decoder.llm.state_dict()
    final = {k.removeprefix("caption_decoder.llm."): v for k, v in llm_weights(out / "final").items()}
    assert final.keys() == untrained.keys() - {"lm_head.weight"}  # the tied head is stored once, as the embedding
    assert any(not torch.equal(final[k], untrained[k]) for k in final if ".q_proj." in k)
    assert all(torch.equal(final[k], untrained[k]) for k in final if "embed_tokens" in k)  # no adapter there
    assert json.loads((out / "final" / "training.json").read_text())["phases"][0]["lora"] == LORA
    assert json.loads((out / "run.json").read_text())["phases"][0]["lora"] == LORA

    # Mid-phase: model/ is a normal checkpoint holding the LLM as it was at the phase start; the adapters are in
    # trainer.pt, the settings in state.json.
    step = out / "checkpoints" / "step_0000002"
    assert json.loads((step / "state.json").read_text())["lora"] == LORA
    vlv.load(step / "model")
    base = llm_weights(step / "model")
    assert all(torch.equal(v, untrained[k.removeprefix("caption_decoder.llm.")]) for k, v in base.items())
    adapters = torch.load(step / "trainer.pt", weights_only=True)["adapters"]
    assert adapters and all(is_adapter_key(k) for k in adapters)


def test_a_resumed_lora_run_equals_the_uninterrupted_one(tmp_path, images, init, full_run, caplog):
    out = tmp_path / "resumed"
    shutil.copytree(full_run, out)
    # As if the run had stopped after its checkpoint mid-way through phase llm.
    for later in ("step_0000004", "step_0000006", "step_0000007"):
        shutil.rmtree(out / "checkpoints" / later)
    shutil.rmtree(out / "final")
    assert json.loads((out / "checkpoints" / "step_0000003" / "state.json").read_text())["phase_done"] is False
    with caplog.at_level("INFO", logger="vlv.train.run"):
        assert run_cli(captioner_args(init, images, out, *ALL_PHASES, "--resume")) == 0
    assert "resuming from" in caplog.text and "step_0000003" in caplog.text
    ours = load_file(out / "final" / "model.safetensors")
    reference = load_file(full_run / "final" / "model.safetensors")
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)
    phases = json.loads((out / "final" / "training.json").read_text())["phases"]
    assert [p["lora"] for p in phases] == [None, LORA, LORA]  # ψ-only phase mlp has no LLM to adapt


def test_lora_flags_are_checked_before_anything_runs(tmp_path, images, init, monkeypatch, capsys):
    args = captioner_args(init, images, tmp_path / "run", "--steps", "1")
    assert run_cli([*args, "--lora-rank", "4", "--phase", "mlp"]) == 2  # ψ only: no LLM to adapt
    assert "does not train the LLM" in capsys.readouterr().err
    assert run_cli([*args, "--lora-alpha", "4"]) == 2
    assert "apply with --lora-rank only" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    assert run_cli([*args, "--lora-rank", "4"]) == 2
    assert "needs the peft library" in capsys.readouterr().err

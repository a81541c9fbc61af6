"""The training-memory estimate (`vlv.sizes.memory_estimate`, `vlv info --memory`) and gradient checkpointing."""

import contextlib
import io
import json

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from vlv.cli import main
from vlv.cli.info import print_memory
from vlv.model import VLV
from vlv.sizes import (
    activation_bytes,
    memory_estimate,
    parameter_counts,
    set_precision,
    training_model,
    training_rows,
)
from vlv.train.recipes import PHASE_PARTS


@pytest.fixture(scope="module")
def estimate():
    """`vlv info --preset tiny --memory --json`, run once for the module."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["info", "--preset", "tiny", "--memory", "--json"]) == 0
    return json.loads(out.getvalue())


def test_weights_grads_and_optimizer_follow_the_precision_policy(estimate):
    comps = parameter_counts("tiny")["components"]
    n = {name: counts["params"] for name, counts in comps.items()}
    used = {  # the parts each run builds: stage 1 never builds the LLM, stage 2 never the UNet or VAE
        "stage1": n["encoder"] + n["text_encoder"] + n["unet"] + n["vae"],
        "stage2": n["encoder"] + n["text_encoder"] + n["projector"] + n["llm"],
    }
    trained = {
        "stage1": comps["encoder"]["stage1"],
        "mlp": n["projector"],
        "llm": n["projector"] + n["llm"],
        "encoder": n["projector"] + n["llm"] + comps["encoder"]["stage2"],
    }
    assert list(estimate["rows"]) == ["stage1", "mlp", "llm", "encoder"]
    for run, row in estimate["rows"].items():
        frozen = used["stage1" if run == "stage1" else "stage2"] - trained[run]
        assert row["weights"] == 4 * trained[run] + 2 * frozen  # fp32 master weights, bf16 frozen weights
        assert row["grads"] == 4 * trained[run]
        assert row["optimizer"] == 2 * 4 * trained[run]  # AdamW: two fp32 states per trained weight
        states = row["weights"] + row["grads"] + row["optimizer"]
        assert row["total"] == states + row["activations"]
        assert row["total_checkpointed"] == states + row["activations_checkpointed"]
        assert row["batch_size"] == (64 if run == "stage1" else 8)  # the paper's per-GPU batches


def test_checkpointing_keeps_fewer_activations(estimate):
    rows = estimate["rows"]
    for run in ("stage1", "llm", "encoder"):
        assert 0 < rows[run]["activations_checkpointed"] < rows[run]["activations"], run
    # Phase 1 trains ψ only: the frozen LLM stays in eval mode, where transformers does not checkpoint.
    assert 0 < rows["mlp"]["activations_checkpointed"] <= rows["mlp"]["activations"]


def test_fake_tensor_measurement_matches_real_tensors(tiny_config):
    """The estimate's forward on fake tensors keeps what the same forward on real tensors keeps (up to the causal
    mask, which transformers materialises when it cannot read the data)."""
    parts = training_rows("tiny")["stage1"]
    real = VLV(tiny_config)
    real.autoencoder()
    set_precision(real, parts, torch.bfloat16, None)
    fake = training_model(tiny_config, "stage1", parts, torch.bfloat16)
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake.to_empty(device="cpu")
        measured = activation_bytes(fake, "stage1", 4, checkpointing=False)
    expected = activation_bytes(real, "stage1", 4, checkpointing=False)
    assert expected > 0
    assert abs(measured - expected) / expected < 0.02, (measured, expected)


def test_memory_table_and_argument_errors(estimate, capsys):
    print_memory(estimate, as_json=False)
    lines = capsys.readouterr().out.splitlines()
    assert "weights" in lines[1] and "act. ckpt" in lines[1] and "total ckpt" in lines[1]
    assert [line.split()[:2] for line in lines[2:6]] == [["stage1", "64"], *[["stage2", p] for p in PHASE_PARTS]]
    assert main(["info", "--preset", "tiny", "--batch-size", "2"]) == 2
    assert "--memory" in capsys.readouterr().err


def _run(model, composition, batch, networks, *, checkpointing):
    """One seeded forward + backward: the gradients of what trains, and how many submodule calls each network
    made (recomputation during backward calls a checkpointed network's submodules again)."""
    model.set_gradient_checkpointing(checkpointing)
    calls = dict.fromkeys(networks, 0)

    def count(name):
        return lambda *_: calls.__setitem__(name, calls[name] + 1)

    handles = [m.register_forward_hook(count(name)) for name, net in networks.items() for m in net.modules()]
    torch.manual_seed(0)
    composition(batch).backward()
    for h in handles:
        h.remove()
    grads = {name: p.grad.clone() for name, p in composition.named_parameters() if p.grad is not None}
    composition.zero_grad(set_to_none=True)
    return grads, calls


def _assert_same_grads_more_calls(plain, checkpointed):
    (grads, calls), (grads_ckpt, calls_ckpt) = plain, checkpointed
    assert grads.keys() == grads_ckpt.keys() and grads
    for name, g in grads.items():
        assert g.abs().sum() > 0, name
        assert torch.allclose(g, grads_ckpt[name], rtol=0, atol=1e-6), name
    for name in calls:
        assert calls_ckpt[name] > calls[name], name  # recomputed during backward


def test_checkpointing_stage1_same_gradients_and_recomputes_the_frozen_unet(tiny_config, images):
    model = VLV(tiny_config)
    model.set_gradient_checkpointing(True)  # before the parts exist: they get it when built
    model.set_trainable(training_rows("tiny")["stage1"])
    autoencoder = model.autoencoder().train()
    assert model.decoder.unet.is_gradient_checkpointing and not model.decoder.unet.training  # frozen, eval mode
    networks = {"unet": model.decoder.unet, "bart": model.encoder.florence.language_model}
    checkpointed = _run(model, autoencoder, {"images": images}, networks, checkpointing=True)
    plain = _run(model, autoencoder, {"images": images}, networks, checkpointing=False)
    assert not model.decoder.unet.is_gradient_checkpointing
    assert all(name.startswith("encoder.") for name in plain[0])
    _assert_same_grads_more_calls(plain, checkpointed)


def test_checkpointing_captioner_same_gradients_and_recomputes_the_llm(tiny_config, images):
    model = VLV(tiny_config)
    model.set_trainable(PHASE_PARTS["llm"])
    captioner = model.captioner().train()
    batch = {"images": images, "captions": ["a red circle at the top left", "a small blue square"]}
    networks = {"llm": model.caption_decoder.llm}
    plain = _run(model, captioner, batch, networks, checkpointing=False)
    checkpointed = _run(model, captioner, batch, networks, checkpointing=True)
    assert model.caption_decoder.llm.is_activation_checkpointing
    _assert_same_grads_more_calls(plain, checkpointed)


def test_lora_rows_train_the_adapters_and_projector_only(tiny_config):
    estimate = memory_estimate("tiny", lora_rank=4)
    rows = estimate["rows"]
    assert list(rows) == ["stage1", "mlp", "llm", "encoder", "llm+lora", "encoder+lora"]
    a = tiny_config.captioner.arch
    D, F, H, KV = a["hidden_size"], a["intermediate_size"], a["num_attention_heads"], a["num_key_value_heads"]
    kv = D // H * KV
    # rank × (in + out) for q, k, v, o, gate, up, down in each layer
    per_layer = (D + D) + (D + kv) + (D + kv) + (D + D) + (D + F) + (D + F) + (F + D)
    adapters = 4 * per_layer * a["num_hidden_layers"]
    projector = parameter_counts("tiny")["components"]["projector"]["params"]
    assert rows["llm+lora"]["grads"] == (projector + adapters) * 4
    assert rows["llm+lora"]["grads"] < rows["llm"]["grads"]
    assert rows["encoder+lora"]["grads"] - rows["llm+lora"]["grads"] == rows["encoder"]["grads"] - rows["llm"]["grads"]

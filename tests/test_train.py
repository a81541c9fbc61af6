import dataclasses
import json

import pytest
import torch

from vlv.diffusion import DiffusionDecoder
from vlv.model import VLV
from vlv.teacher import TeacherTrainConfig, train_teacher
from vlv.train import AutoencoderTrainConfig, OptimConfig, lr_factor, train_autoencoder, train_captioner


def test_lr_schedule_warms_up_then_decays_to_zero_at_the_last_step():
    cfg = OptimConfig(steps=100, warmup_steps=10)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(55, cfg) == pytest.approx(0.5)
    assert lr_factor(100, cfg) == pytest.approx(0.0)
    assert all(lr_factor(s, cfg) >= lr_factor(s + 1, cfg) for s in range(10, 100))


def test_stage_one_lowers_the_held_out_loss(tiny_config, images):
    model = VLV(tiny_config)

    def fixed_loss():
        with torch.no_grad():
            return model.autoencoder_loss(images, torch.Generator().manual_seed(9), noises_per_image=8).item()

    before = fixed_loss()
    cfg = AutoencoderTrainConfig(steps=40, batch_size=2, lr=3e-3, noises_per_image=4)
    log = train_autoencoder(model, lambda step: images, cfg, log_every=10)
    assert [e["step"] for e in log] == [10, 20, 30, 40]
    assert fixed_loss() < before


def test_stage_two_phases_train_what_they_should(tiny_config, images):
    model = VLV(tiny_config)
    captions = ["a red circle", "a blue square at the top"]
    llm_before = [p.detach().clone() for p in model.captioner.llm.parameters()]
    enc_before = model.encoder.queries.detach().clone()
    model.encoder.set_trainable([])
    train_captioner(model, lambda step: (images, captions), OptimConfig(steps=5, lr=1e-3), log_every=5)
    assert all(torch.equal(a, b) for a, b in zip(llm_before, model.captioner.llm.parameters()))  # phase 1: ψ only
    assert torch.equal(enc_before, model.encoder.queries)
    model.captioner.set_trainable(llm=True)
    log = train_captioner(model, lambda step: (images, captions), OptimConfig(steps=30, lr=3e-3), log_every=10)
    assert not all(torch.equal(a, b) for a, b in zip(llm_before, model.captioner.llm.parameters()))
    assert log[-1]["loss"] < log[0]["loss"]


def test_a_nan_loss_stops_training_with_a_clear_error(tiny_config):
    model = VLV(tiny_config)
    nan_images = torch.full((2, 3, 16, 16), float("nan"))
    with pytest.raises(FloatingPointError, match="stage 1: loss is nan at step 0"):
        train_autoencoder(model, lambda step: nan_images, AutoencoderTrainConfig(steps=3), log_every=1)


def test_teacher_training_saves_a_loadable_ema_teacher(tiny_config, tmp_path):
    decoder = DiffusionDecoder(tiny_config.diffusion, pretrained=False)
    before = decoder.unet.conv_in.weight.detach().clone()
    images = torch.rand(4, 3, 16, 16)
    cfg = TeacherTrainConfig(samples=40, batch_size=4, warmup_steps=2, snapshot_every=20)
    ema = train_teacher(decoder, lambda step: (images, ["a red circle"] * 4), cfg, tmp_path)
    assert not torch.equal(decoder.unet.conv_in.weight, before)  # the raw weights trained …
    assert not torch.equal(ema.unet.conv_in.weight, decoder.unet.conv_in.weight)  # … and the EMA lags them
    log = json.loads((tmp_path / "log.json").read_text())["log"]
    assert [e["samples"] for e in log] == [20, 40]
    again = DiffusionDecoder(dataclasses.replace(tiny_config.diffusion, source=str(tmp_path / "final")))
    assert torch.equal(again.unet.conv_in.weight, ema.unet.conv_in.weight)
    assert not any(p.requires_grad for p in again.parameters())

import dataclasses
import json

import torch

from vlv.conditioning import build_text_conditioner
from vlv.diffusion import build_diffusion_decoder
from vlv.shapes.teacher import TeacherRecipe, TextToImage, train_teacher
from vlv.train.loop import OptimConfig


def test_teacher_training_saves_loadable_ema_snapshots(tiny_config, tmp_path):
    recipe = TeacherRecipe(OptimConfig(steps=4, lr=1e-3, warmup_steps=1, ema_decay=0.5), batch_size=4, snapshot_every=2)
    final = train_teacher(tmp_path, recipe, config=tiny_config.teacher)
    log = json.loads((tmp_path / "log.json").read_text())["log"]
    assert [e["samples"] for e in log] == [8, 16] and all("heldout_gap" in e for e in log)
    teacher = dataclasses.replace(tiny_config.teacher, source=str(final))
    ema_unet = build_diffusion_decoder(teacher, pretrained=True).unet

    def snapshot(samples: int) -> torch.Tensor:
        folder = tmp_path / f"snapshots/samples_{samples:07d}"
        return build_diffusion_decoder(dataclasses.replace(teacher, source=str(folder)), pretrained=True).unet

    assert torch.equal(snapshot(16).conv_in.weight, ema_unet.conv_in.weight)  # the final teacher is the last EMA
    assert not torch.equal(snapshot(8).conv_in.weight, ema_unet.conv_in.weight)  # and training moved it
    text = build_text_conditioner(teacher, pretrained=True)
    assert not any(p.requires_grad for p in [*ema_unet.parameters(), *text.parameters()])  # loaded frozen


def test_caption_dropout_uses_the_empty_prompt(tiny_config):
    conditioner = build_text_conditioner(tiny_config.teacher, pretrained=False)
    decoder = build_diffusion_decoder(tiny_config.teacher, pretrained=False)
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    batch = {"images": images, "captions": ["a red circle", "a blue square", "a green triangle"]}
    with torch.no_grad():
        torch.manual_seed(1)
        dropped = TextToImage(conditioner, decoder, caption_dropout=1.0)(batch)
        torch.manual_seed(1)
        empty = TextToImage(conditioner, decoder, caption_dropout=0.0)({**batch, "captions": [""] * 3})
    assert torch.equal(dropped, empty)  # every caption dropped = every caption empty, same noise
    assert any(p.requires_grad for p in conditioner.text_encoder.parameters())  # both networks train

"""The commands that produced the committed assets, at smoke size: what they write loads back as it should."""

import dataclasses
import json

import torch

import vlv
from vlv.checkpoint import read_training
from vlv.cli import main
from vlv.diffusion import build_diffusion_decoder
from vlv.shapes import preset
from vlv.shapes.stage1 import STAGE1_FROM_SCRATCH, recipe_of


def test_train_encoder_writes_a_stage1_checkpoint(tmp_path, capsys):
    out = tmp_path / "encoder"
    args = ["shapes", "train-encoder", "--out", str(out), "--steps", "2", "--compose-steps", "1"]
    assert main([*args, "--composition-pairs", "2"]) == 0
    assert "held-out recovered" in capsys.readouterr().out
    record = read_training(out)
    recipe = recipe_of(record)
    assert (recipe.plain.optim.steps, recipe.compose.optim.steps, recipe.composition_pairs) == (2, 1, 2)
    assert [e["step"] for e in record["log"]] == [1, 2, 3] and record["log"][-1]["segment"] == "compose"
    model = vlv.load(out)
    config = json.loads((out / "config.json").read_text())
    assert config["weights"] == sorted(preset.STAGE1_PARTS)  # the encoder only: no caption decoder was built
    assert model.resolved_source("teacher") == preset.TEACHER
    assert model.embed(torch.rand(1, 3, 16, 16)).shape == (1, 77, 128)
    assert recipe.plain.optim.betas == (0.9, 0.99)  # the committed encoder's recipe: untuned
    assert not recipe.empty_prompt_offset and not model.config.encoder.empty_prompt_offset


def test_train_encoder_takes_the_from_scratch_recipe_and_its_defaults(tmp_path):
    out = tmp_path / "encoder"
    args = ["shapes", "train-encoder", "--recipe", "from-scratch", "--out", str(out), "--steps", "2"]
    assert main([*args, "--compose-steps", "0"]) == 0
    recipe = recipe_of(read_training(out))
    assert recipe.compose is None and recipe.plain == dataclasses.replace(
        STAGE1_FROM_SCRATCH.plain, optim=dataclasses.replace(STAGE1_FROM_SCRATCH.plain.optim, steps=2)
    )
    # Its encoder's z started at the teacher's empty prompt: the offset is saved with φ and loads back.
    assert recipe.empty_prompt_offset and STAGE1_FROM_SCRATCH.empty_prompt_offset
    model = vlv.load(out)
    assert model.config.encoder.empty_prompt_offset
    empty = model.conditioner.prompt_embeddings([""])[0]  # (77, 128) the token embeddings of ""
    assert torch.equal(model.encoder.projection[-1].offset, empty[:77])
    assert empty.abs().max() > 0  # a real embedding, not the buffer's zeros


def test_train_teacher_writes_a_diffusers_teacher(tmp_path):
    out = tmp_path / "teacher"
    assert main(["shapes", "train-teacher", "--out", str(out), "--samples", "8", "--batch-size", "4"]) == 0
    log = json.loads((out / "log.json").read_text())
    assert [e["samples"] for e in log["log"]] == [8] and log["recipe"]["batch_size"] == 4
    teacher = preset.config(teacher=str(out / "final")).teacher
    assert list(build_diffusion_decoder(teacher, pretrained=True).unet.config.block_out_channels) == [32, 64, 64]


def test_a_second_segment_without_pairs_trains_on_the_same_renders_without_the_composition_term():
    from vlv.shapes.stage1 import stage1_batches, two_segments

    taught, plain = two_segments(4, 3, 2), two_segments(4, 3, 0)
    for step in range(2):
        with_term = stage1_batches(taught, compose=True)(step)
        without = stage1_batches(plain, compose=True)(step)
        assert set(with_term) == {"images", "sources", "composites"} and set(without) == {"images"}
        assert torch.equal(with_term["images"], without["images"])
    assert plain.renders == 4 * 32 + 3 * 24 and taught.renders == plain.renders + 3 * 3 * 2

import dataclasses
import json

import pytest

from vlv.config import PRESETS, VLVConfig, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_json_round_trip(name):
    cfg = preset(name)
    again = VLVConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="paper"):
        preset("huge")


def test_unknown_config_field_is_rejected():
    d = preset("tiny").to_dict()
    d["encoder"]["num_querys"] = 16
    with pytest.raises(ValueError, match="num_querys"):
        VLVConfig.from_dict(d)


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset("tiny").encoder.num_queries = 3


def test_paper_preset_follows_the_paper():
    cfg = preset("paper")
    assert cfg.encoder.num_queries == 77 and cfg.encoder.z_dim == 1024
    assert cfg.diffusion.scheduler["beta_schedule"] == "scaled_linear"
    assert (cfg.diffusion.scheduler["beta_start"], cfg.diffusion.scheduler["beta_end"]) == (0.00085, 0.012)
    assert cfg.diffusion.scheduler["prediction_type"] == "epsilon"
    assert cfg.diffusion.image_size == 384 and cfg.diffusion.latent_scale == 0.18215
    assert (cfg.diffusion.guidance, cfg.diffusion.sample_steps) == (2.0, 50)
    assert cfg.captioner.projector_hidden == 2048 and cfg.captioner.max_caption_tokens == 300

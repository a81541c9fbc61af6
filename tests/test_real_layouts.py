"""The paper preset against its sources' real on-disk layouts (tiny random-init copies from `tests.real_layouts`).

- `vlv.load("paper", florence=F, teacher=SD, llm=Q)` builds, embeds, captions and reconstructs — the same code path as
  with the real weights, only the sizes come from the fixtures.
- A source that cannot be read is one clear error naming the part, the source and how to use a local copy.
- Config fidelity: each real config file, with the fixture's sizes put back to the paper preset's, builds exactly the
  architecture of `vlv.presets.paper()`; every field of the real file is either the preset's value or listed in
  `IGNORED` with the reason — so a field the real files set and the preset silently ignores fails here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image

import vlv
from tests import real_layouts as R
from vlv.cli import main
from vlv.loading import SourceUnavailableError
from vlv.presets import paper


@pytest.fixture(scope="session")
def sources(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("real_layouts")
    return {
        "florence": str(R.write_florence(root / "florence")),
        "teacher": str(R.write_sd_pipeline(root / "sd")),
        "llm": str(R.write_qwen(root / "qwen")),
    }


@pytest.fixture
def image_file(tmp_path) -> str:
    path = tmp_path / "image.png"
    Image.fromarray((torch.rand(48, 64, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()).save(path)
    return str(path)


# ----- the paper preset on the real layouts -------------------------------------------------------------------------


def test_paper_preset_embeds_captions_reconstructs_from_real_layouts(sources):
    from transformers import AutoTokenizer

    model = vlv.load("paper", **sources)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    z = model.embed(images)
    assert z.shape == (1, 77, 1024)  # 77 queries × the paper's z_dim (= the SD 2.x text width the fixture keeps)
    # The task prompt was tokenized by the Florence folder's own BART tokenizer: <s> … </s>.
    tokenizer = AutoTokenizer.from_pretrained(sources["florence"])
    expected = tuple(tokenizer(model.config.encoder.task_prompt).input_ids)
    assert model.config.encoder.prompt_token_ids == expected
    assert expected[0] == tokenizer.bos_token_id and expected[-1] == tokenizer.eos_token_id and len(expected) > 5
    captions = model.caption(images, max_new_tokens=3)
    assert isinstance(captions, list) and len(captions) == 1 and isinstance(captions[0], str)
    out = model.reconstruct(images, steps=2)
    assert out.shape == (1, 3, 384, 384) and 0 <= out.min() and out.max() <= 1
    # Every pretrained part came from its folder, in the folder's class and size.
    assert model.encoder.florence.config.text_config.d_model == 32
    assert model.conditioner.text_encoder.config.num_hidden_layers == 1
    assert list(model.decoder.unet.config.block_out_channels) == R.SD_UNET_SHRINK["block_out_channels"]
    assert model.caption_decoder.llm.config.hidden_size == 32
    assert model.caption_decoder.tokenizer.eos_token == "<|endoftext|>"


def test_cli_caption_paper_with_local_sources(sources, image_file, capsys):
    flags = ["--florence", sources["florence"], "--teacher", sources["teacher"], "--llm", sources["llm"]]
    assert main(["caption", "--model", "paper", *flags, "--max-new-tokens", "2", image_file]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["image"] == image_file and isinstance(line["caption"], str)


# ----- sources that cannot be read ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, part, component, tried",
    [
        ({}, "encoder", "the encoder's Florence-2", "florence-community/Florence-2-large"),  # the preset, offline
        ({"florence": "/nonexistent/florence"}, "encoder", "the encoder's Florence-2", "/nonexistent/florence"),
        ({"teacher": "nobody/no-such-sd"}, "conditioner", "the teacher's text encoder", "nobody/no-such-sd"),
        ({"teacher": "nobody/no-such-sd"}, "decoder", "the teacher's UNet and VAE", "nobody/no-such-sd"),
        ({"llm": "nobody/no-such-llm"}, "caption_decoder", "the caption decoder's LLM", "nobody/no-such-llm"),
    ],
)
def test_unreadable_source_is_one_clear_error(override, part, component, tried):
    model = vlv.load("paper", **override)
    option = {"encoder": "florence", "caption_decoder": "llm"}.get(part, "teacher")
    with pytest.raises(SourceUnavailableError) as info:
        model.part(part)
    message = str(info.value)
    assert component in message and tried in message and f"--{option} DIR" in message and f"{option}=DIR" in message
    assert "hf download" in message and "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no stack of hub errors under it


def test_folder_in_another_layout_is_named(sources):
    """A folder that exists but is not a Florence-2 folder (here the SD pipeline) says so, with the loader's reason."""
    with pytest.raises(SourceUnavailableError, match="does not hold it in the layout of its hub repository"):
        vlv.load("paper", florence=sources["teacher"]).part("encoder")


def test_cli_reports_an_unreadable_source_on_one_line(image_file, capsys):
    assert main(["caption", "--model", "paper", "--florence", "/nonexistent/florence", image_file]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vlv caption: error: the encoder's Florence-2 is unavailable") and "\n" not in err


# ----- config fidelity ----------------------------------------------------------------------------------------------

# Fields of the real config files that do not reach the model vlv builds, each with the reason. The test below fails
# for any real field that is neither the preset's value nor listed here, and for any entry not in the real file.
METADATA = "file metadata, not architecture"
IGNORED = {
    "florence": {
        "architectures": METADATA,
        "torch_dtype": "storage dtype of the weights; vlv chooses the dtype (`load(dtype=…)`)",
        # The remote-code config's names, kept by the conversion; the native classes read their own fields.
        "vision_config.dim_embed": "legacy name of `embed_dim`, which carries the same values",
        "vision_config.visual_temporal_embedding": "legacy form of `max_temporal_embeddings` (same value)",
        "vision_config.image_pos_embed": "legacy form of `max_pos_embeddings`",
        "vision_config.max_pos_embeddings": "the conversion's misspelling of `max_position_embeddings` (50 both)",
        "vision_config.image_feature_source": "the native projector always pools spatially and temporally",
        "vision_config.enable_checkpoint": "gradient checkpointing is `VLV.set_gradient_checkpointing`'s choice",
        # Generation and classification settings of Florence's own LM head, which VLV never uses.
        "text_config.early_stopping": "generation setting of Florence's LM head (unused by VLV)",
        "text_config.no_repeat_ngram_size": "generation setting of Florence's LM head (unused by VLV)",
        "text_config.num_beams": "generation setting of Florence's LM head (unused by VLV)",
        "text_config.forced_bos_token_id": "generation setting of Florence's LM head (unused by VLV)",
        "text_config.forced_eos_token_id": "generation setting of Florence's LM head (unused by VLV)",
        "text_config.classif_dropout": "BART's classification head, absent from Florence",
        "text_config.gradient_checkpointing": "gradient checkpointing is `VLV.set_gradient_checkpointing`'s choice",
        "text_config.normalize_before": "not a BartConfig field (mBART's); BART is post-norm",
        "text_config.add_bias_logits": "not a BartConfig field; VLV drops the LM head and its bias",
        "text_config.add_final_layer_norm": "not a BartConfig field (mBART's)",
    },
    "text_encoder": {
        "_name_or_path": METADATA,
        "architectures": METADATA,
        "transformers_version": METADATA,
        "torch_dtype": "storage dtype of the weights; vlv chooses the dtype (`load(dtype=…)`)",
        "bos_token_id": "CLIP's pooled output only (legacy eos id 2 → argmax pooling); VLV reads last_hidden_state",
        "eos_token_id": "CLIP's pooled output only (legacy eos id 2 → argmax pooling); VLV reads last_hidden_state",
        "projection_dim": "CLIPTextModelWithProjection's projection, absent from CLIPTextModel",
        "dropout": "not a CLIPTextConfig field in transformers 5 (0.0 anyway; the frozen encoder runs in eval mode)",
    },
    "unet": {k: METADATA for k in ("_class_name", "_diffusers_version", "_name_or_path")},
    "vae": {k: METADATA for k in ("_class_name", "_diffusers_version", "_name_or_path")},
    "scheduler": {
        "_class_name": "the pipeline's sampler (PNDM); VLV trains with DDPM's forward process and samples with its own",
        "_diffusers_version": METADATA,
        "set_alpha_to_one": "a PNDM sampling option; VLV's samplers are DPM-Solver++ and DDPM",
        "skip_prk_steps": "a PNDM sampling option; VLV's samplers are DPM-Solver++ and DDPM",
    },
    "llm": {
        "architectures": METADATA,
        "transformers_version": METADATA,
        "torch_dtype": "storage dtype of the weights; vlv chooses the dtype (`load(dtype=…)`)",
        "use_mrope": "Qwen2-VL's multimodal RoPE switch (false); Qwen2 has no such field",
        "sliding_window": "unused: use_sliding_window is false (Qwen2Config then sets it to None)",
    },
}


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested config dicts → dotted keys (`text_config.d_model`)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k in ("text_config", "vision_config"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


@dataclass
class Component:
    """One real config file: how vlv builds a model from such a config, and from the paper preset."""

    name: str
    real: dict
    file: str  # the config file inside the fixture folder
    shrink: tuple[str, ...]  # the fields the fixture makes small (put back to the paper preset's values)
    build: callable  # config dict → model (on the current device)
    build_preset: callable  # () → the paper preset's model of this component
    config_of: callable  # model → its normalised config dict (flat)
    known: set = field(default_factory=set)  # fields the class reads


def _components() -> list[Component]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import (
        BartConfig,
        CLIPTextConfig,
        CLIPTextModel,
        Florence2Config,
        Florence2Model,
        Florence2VisionConfig,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    from vlv.conditioning import build_text_conditioner
    from vlv.encoder import build_florence

    cfg = paper()

    def hf_config(model) -> dict:
        return _flat(model.config.to_dict())

    def diffusers_config(model) -> dict:  # without diffusers' bookkeeping (`_class_name`, `_use_default_values`, …)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(model.config).items() if k[0] != "_"}

    florence_known = {*Florence2Config().to_dict(), *(f"vision_config.{k}" for k in Florence2VisionConfig().to_dict())}
    # A config reads its fields, the aliases of its `attribute_map` (BART's num_hidden_layers = encoder_layers) …
    florence_known |= {f"text_config.{k}" for k in [*BartConfig().to_dict(), *BartConfig.attribute_map]}
    return [
        Component(
            "florence", R.FLORENCE_REAL, "florence/config.json", (*R.FLORENCE_SHRINK, *R.FLORENCE_VOCAB_KEYS),
            build=lambda c: Florence2Model(Florence2Config(**c)),
            build_preset=lambda: build_florence(cfg.encoder, pretrained=False),
            config_of=hf_config, known=florence_known,
        ),
        Component(
            "text_encoder", R.SD_TEXT_ENCODER_REAL, "sd/text_encoder/config.json",
            (*R.SD_TEXT_ENCODER_SHRINK, *R.SD_TEXT_ENCODER_VOCAB_KEYS),
            build=lambda c: CLIPTextModel(CLIPTextConfig(**c)),
            build_preset=lambda: build_text_conditioner(cfg.teacher, pretrained=False).text_encoder,
            config_of=hf_config, known={*CLIPTextConfig().to_dict(), *CLIPTextConfig.attribute_map},
        ),
        Component(
            "unet", R.SD_UNET_REAL, "sd/unet/config.json", tuple(R.SD_UNET_SHRINK),
            build=UNet2DConditionModel.from_config,
            build_preset=lambda: UNet2DConditionModel(**cfg.teacher.unet_arch),
            config_of=diffusers_config, known=set(UNet2DConditionModel.from_config({}).config),
        ),
        Component(
            "vae", R.SD_VAE_REAL, "sd/vae/config.json", tuple(R.SD_VAE_SHRINK),
            build=AutoencoderKL.from_config,
            build_preset=lambda: AutoencoderKL(**cfg.teacher.vae_arch),
            config_of=diffusers_config, known=set(AutoencoderKL.from_config({}).config),
        ),
        Component(
            # vlv reads scheduler/ with DDPMScheduler (see vlv.diffusion.build_diffusion_decoder).
            "scheduler", R.SD_SCHEDULER_REAL, "sd/scheduler/scheduler_config.json", (),
            build=DDPMScheduler.from_config,
            build_preset=lambda: DDPMScheduler(**cfg.teacher.scheduler),
            config_of=diffusers_config, known=set(DDPMScheduler().config),
        ),
        Component(
            "llm", R.QWEN_REAL, "qwen/config.json", (*R.QWEN_SHRINK, *R.QWEN_VOCAB_KEYS),
            build=lambda c: Qwen2ForCausalLM(Qwen2Config(**c)),
            build_preset=lambda: Qwen2ForCausalLM(Qwen2Config(**cfg.captioner.arch)),
            # … and, in transformers 5, rope_theta folded into rope_parameters (compared below).
            config_of=hf_config, known={*Qwen2Config().to_dict(), *Qwen2Config.attribute_map, "rope_theta"},
        ),
    ]  # fmt: skip


COMPONENTS = {c.name: c for c in _components()}


# Legacy fields the fixtures shrink that are spelled otherwise in the config vlv builds.
ALIASES = {
    "vision_config.dim_embed": "vision_config.embed_dim",
    "text_config.num_hidden_layers": "text_config.encoder_layers",
}


def _shapes(model) -> dict[str, tuple]:
    """Parameter and buffer shapes; a scheduler has none (its betas follow from the config fields compared)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()} if isinstance(model, torch.nn.Module) else {}


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_fixture_config_is_the_real_file_with_smaller_sizes(sources, name):
    c = COMPONENTS[name]
    written = _flat(json.loads((Path(sources["florence"]).parent / c.file).read_text()))
    real = _flat(c.real)
    assert written.keys() == real.keys(), f"{name}: fields added or missing: {written.keys() ^ real.keys()}"
    changed = {k for k in real if written[k] != real[k]}
    assert changed <= set(c.shrink), f"{name}: fields other than sizes differ from the real file: {changed}"


@pytest.mark.parametrize("name", list(COMPONENTS))
def test_real_config_builds_the_paper_architecture(sources, name):
    """The fixture's config file with its sizes put back to the paper preset's builds the preset's architecture, and
    every field of the real file is the preset's value or deliberately ignored."""
    c = COMPONENTS[name]
    written = json.loads((Path(sources["florence"]).parent / c.file).read_text())
    with torch.device("meta"):
        preset_model = c.build_preset()
        preset = c.config_of(preset_model)
        # The paper preset's sizes are the real file's sizes ...
        sizes = {k: preset[ALIASES.get(k, k)] for k in c.shrink}
        wrong = {k: (v, _flat(c.real)[k]) for k, v in sizes.items() if v != _flat(c.real)[k]}
        assert not wrong, f"{name}: the paper preset's sizes differ from the real file's (preset, real): {wrong}"
        # ... so the fixture scaled back up by them is the real file again, and builds the same network.
        scaled = R.with_values(written, sizes)
        scaled.pop("torch_dtype", None)  # the weights' storage dtype, not architecture (a float16 meta model else)
        model = c.build(scaled)
        assert _shapes(model) == _shapes(preset_model), f"{name}: the real config builds another architecture"
    built = c.config_of(model)
    ignored = IGNORED.get(name, {})
    real = _flat(c.real)
    stale = set(ignored) - set(real)
    assert not stale, f"{name}: IGNORED lists fields the real file does not have: {sorted(stale)}"
    unread = {k for k in real if k not in c.known and k not in ignored}
    assert not unread, f"{name}: real fields the {type(model).__name__} config does not read: {sorted(unread)}"
    differ = {
        k: (built.get(k), preset.get(k))
        for k in set(built) | set(preset)
        if built.get(k) != preset.get(k) and k not in ignored and k not in ("_name_or_path", "dtype")
    }
    assert not differ, f"{name}: fields where the real config and the paper preset differ (real, preset): {differ}"

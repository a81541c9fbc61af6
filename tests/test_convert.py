"""`vlv convert official`: a tiny checkpoint in the released captioner's layout, written here from the key table of
the real-weights notes (official names as data, not by inverting the converter), converted and checked against
direct computations from the official tensors."""

import contextlib
import dataclasses
import io
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from transformers import Qwen2Config, Qwen2ForCausalLM

import vlv
from vlv.cli import main
from vlv.convert import ConversionReport, _fit_positions, convert_official
from vlv.loading import CheckpointMismatchError
from vlv.model import VLV
from vlv.presets import STAGE1_PARTS, preset

FL = "VLV_model.model."  # the remote-code Florence-2 inside the official model
OFFICIAL_VOCAB = 60  # rows of the official BART vocabulary; the native tiny embedding has 64 (padded)
BART_VOCAB = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
# One DaViT block, official (remote code, PreNorm wrappers) → native `Florence2Model`, per the notes' table.
DAVIT_BLOCK = [
    ("spatial_block.conv1.fn.dw", "spatial_block.conv1"),
    ("spatial_block.window_attn.norm", "spatial_block.norm1"),
    ("spatial_block.window_attn.fn.qkv", "spatial_block.window_attn.qkv"),
    ("spatial_block.window_attn.fn.proj", "spatial_block.window_attn.proj"),
    ("spatial_block.conv2.fn.dw", "spatial_block.conv2"),
    ("spatial_block.ffn.norm", "spatial_block.norm2"),
    ("spatial_block.ffn.fn.net.fc1", "spatial_block.ffn.fc1"),
    ("spatial_block.ffn.fn.net.fc2", "spatial_block.ffn.fc2"),
    ("channel_block.conv1.fn.dw", "channel_block.conv1"),
    ("channel_block.channel_attn.norm", "channel_block.norm1"),
    ("channel_block.channel_attn.fn.qkv", "channel_block.channel_attn.qkv"),
    ("channel_block.channel_attn.fn.proj", "channel_block.channel_attn.proj"),
    ("channel_block.conv2.fn.dw", "channel_block.conv2"),
    ("channel_block.ffn.norm", "channel_block.norm2"),
    ("channel_block.ffn.fn.net.fc1", "channel_block.ffn.fc1"),
    ("channel_block.ffn.fn.net.fc2", "channel_block.ffn.fc2"),
]
PROJECTOR = [  # Florence's image projection side, official → native `multi_modal_projector.`
    ("image_proj_norm.weight", "image_proj_norm.weight"),
    ("image_proj_norm.bias", "image_proj_norm.bias"),
    ("image_pos_embed.row_embeddings.weight", "image_position_embed.row_embeddings.weight"),
    ("image_pos_embed.column_embeddings.weight", "image_position_embed.column_embeddings.weight"),
    ("visual_temporal_embed.pos_idx_to_embed", "visual_temporal_embed.pos_idx_to_embed"),
]


def official_layout(authors: VLV, clip: dict) -> dict[str, torch.Tensor]:
    """The authors' model as the release stores it: official names, `module.` prefixes, bf16, an unpadded BART
    vocabulary, the image projection as a bare [in, out] matrix, the queries as [1, 77, D]."""
    enc = {k.removeprefix("florence."): v for k, v in authors.encoder.state_dict().items()}
    cap = authors.caption_decoder.state_dict()
    out = {}
    for i in range(4):
        for p in ("weight", "bias"):
            out[f"{FL}vision_tower.convs.{i}.proj.{p}"] = enc[f"vision_tower.convs.{i}.conv.{p}"]
            out[f"{FL}vision_tower.convs.{i}.norm.{p}"] = enc[f"vision_tower.convs.{i}.norm.{p}"]
    for s, depth in enumerate(authors.config.encoder.arch["vision_config"]["depths"]):
        for b in range(depth):
            for official, native in DAVIT_BLOCK:
                for p in ("weight", "bias"):
                    out[f"{FL}vision_tower.blocks.{s}.{b}.{official}.{p}"] = enc[
                        f"vision_tower.blocks.{s}.{b}.{native}.{p}"
                    ]
    out[FL + "image_projection"] = enc["multi_modal_projector.image_projection.weight"].T  # used as x @ P
    for official, native in PROJECTOR:
        out[FL + official] = enc["multi_modal_projector." + native]
    for k, v in enc.items():
        if k.startswith("language_model."):
            rest = k.removeprefix("language_model.")
            out[f"{FL}language_model.model.{rest}"] = v[:OFFICIAL_VOCAB] if rest in BART_VOCAB else v
    out[FL + "language_model.lm_head.weight"] = enc["language_model.shared.weight"][:OFFICIAL_VOCAB]
    out[FL + "language_model.final_logits_bias"] = torch.zeros(1, OFFICIAL_VOCAB)
    out["VLV_model.query_embed"] = enc["queries"][None]
    # The release's CLIPTextModel (transformers 4) keeps its weights under `text_model.`; transformers 5 does not.
    out.update({"VLV_model.text_encoder.text_model." + k.removeprefix("text_model."): v for k, v in clip.items()})
    for i in ("0", "2"):
        for p in ("weight", "bias"):
            out[f"VLV_model.language_proj.{i}.{p}"] = enc[f"projection.{i}.{p}"]
            out[f"mlp.layers.{i}.{p}"] = cap[f"projector.{i}.{p}"]
    out.update({"qwen2_model." + k.removeprefix("llm."): v for k, v in cap.items() if k.startswith("llm.")})
    return {"module." + k: v.to(torch.bfloat16).clone() for k, v in out.items()}


def bart_init_tiny():
    """The tiny preset with its encoder at plain BART init: the authors' encoder is a pretrained Florence-2, whose
    weights are of that scale (our re-drawn cross-attention is for random-init encoders only)."""
    tiny = preset("tiny")
    return dataclasses.replace(tiny, encoder=dataclasses.replace(tiny.encoder, open_cross_attention=False))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The official-layout file, its tensors, and the CLI's conversion of it (with the report it printed)."""
    root = tmp_path_factory.mktemp("release")
    tiny = bart_init_tiny()
    authors = VLV(dataclasses.replace(tiny, seed=123)).eval()  # other values than the converter's target init
    clip = VLV(tiny).conditioner.text_encoder.state_dict()  # the teacher's text tower, frozen in the release
    official = official_layout(authors, clip)
    torch.save(official, root / "model.pt")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert (
            main(["convert", "official", str(root / "model.pt"), "--out", str(root / "vlv"), "--preset", "tiny"]) == 0
        )
    return dict(
        root=root, official={k.removeprefix("module."): v for k, v in official.items()}, report=stdout.getvalue()
    )


def test_report_accounts_for_every_tensor(release):
    report, n = release["report"], len(release["official"])
    clip = sum(k.startswith("VLV_model.text_encoder.") for k in release["official"])
    assert f"mapped: {n - 2 - clip} tensors" in report
    assert "dropped: 2 tensors (Florence's LM head: VLV does not use it)" in report
    assert f"dropped: {clip} tensors (frozen teacher CLIP text tower" in report
    assert "unaccounted: 0" in report and "weights stored in bfloat16" in report
    config = json.loads((release["root"] / "vlv" / "config.json").read_text())
    assert config["reconstructs"] is False and len(config["weights"]) == 6
    with safe_open(str(release["root"] / "vlv" / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("encoder.queries").dtype == torch.bfloat16  # --dtype keep


def test_converted_equals_direct_computation(release, images):
    off = {k: v.float() for k, v in release["official"].items()}
    model = vlv.load(release["root"] / "vlv")
    enc, cap = model.encoder, model.caption_decoder
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        # The image projection: the official bare matrix is applied as x @ P, then its LayerNorm.
        x = torch.randn(2, 5, 32, generator=g)
        projected = enc.florence.multi_modal_projector.image_projection(x)
        torch.testing.assert_close(projected, x @ off[FL + "image_projection"])
        normed = F.layer_norm(projected, (32,), off[FL + "image_proj_norm.weight"], off[FL + "image_proj_norm.bias"])
        torch.testing.assert_close(enc.florence.multi_modal_projector.image_proj_norm(projected), normed)
        # BART's vocabulary: the official rows first, the native padding rows from the target's own init.
        shared = enc.florence.language_model.shared.weight
        init = VLV(preset("tiny")).encoder.florence.language_model.shared.weight
        assert torch.equal(shared[:OFFICIAL_VOCAB], off[FL + "language_model.model.shared.weight"])
        assert torch.equal(shared[OFFICIAL_VOCAB:], init[OFFICIAL_VOCAB:].bfloat16().float())
        # The queries and φ, by hand from the official tensors.
        assert torch.equal(enc.queries, off["VLV_model.query_embed"][0])
        h = torch.randn(2, 77, 32, generator=g)
        lp = {k.removeprefix("VLV_model.language_proj."): v for k, v in off.items() if "language_proj" in k}
        phi = F.gelu(h @ lp["0.weight"].T + lp["0.bias"]) @ lp["2.weight"].T + lp["2.bias"]
        torch.testing.assert_close(enc.projection(h), phi)
        # z end to end: the authors' encoder with the same (bf16) values, in the native classes.
        authors = VLV(dataclasses.replace(bart_init_tiny(), seed=123)).eval()
        authors.encoder.to(torch.bfloat16).float()
        z = model.embed(images)
        torch.testing.assert_close(z, authors.embed(images), atol=1e-5, rtol=1e-5)
        # Caption logits for the image's prefix: ψ by hand, then a Qwen2 holding the official `qwen2_model.*`.
        c = model.condition(z)
        mlp = {k.removeprefix("mlp.layers."): v for k, v in off.items() if k.startswith("mlp.layers.")}
        prefix = F.gelu(c @ mlp["0.weight"].T + mlp["0.bias"]) @ mlp["2.weight"].T + mlp["2.bias"]
        qwen = Qwen2ForCausalLM(Qwen2Config(**preset("tiny").captioner.arch)).eval()
        qwen.load_state_dict({k.removeprefix("qwen2_model."): v for k, v in off.items() if k.startswith("qwen2_")})
        expected = qwen(inputs_embeds=prefix).logits
        torch.testing.assert_close(cap.llm(inputs_embeds=cap.prefix(c)).logits, expected, atol=1e-5, rtol=1e-5)


def test_renamed_key_fails_naming_it(release, tmp_path):
    official = dict(release["official"])
    official["VLV_model.model.vision_tower.convs.0.projection.weight"] = official.pop(
        FL + "vision_tower.convs.0.proj.weight"
    )
    torch.save({"model_state_dict": official}, tmp_path / "model.pt")
    with pytest.raises(CheckpointMismatchError, match=r"convs\.0\.projection\.weight"):
        convert_official(tmp_path / "model.pt", tmp_path / "out", config=preset("tiny"))
    assert not (tmp_path / "out").exists()


def test_converted_captions_and_reconstruct_warns_once(release, tmp_path, capsys):
    converted = release["root"] / "vlv"
    Image.new("RGB", (32, 32), (200, 40, 40)).save(tmp_path / "red.png")
    assert main(["caption", "--model", str(converted), "--max-new-tokens", "4", str(tmp_path / "red.png")]) == 0
    assert "caption" in json.loads(capsys.readouterr().out.splitlines()[-1])
    model = vlv.load(converted)
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.reconstruct(image, steps=1)
        model.reconstruct(image, steps=1)
    assert len([w for w in caught if "needs a stage-1 encoder" in str(w.message)]) == 1  # once, not per call
    # A stage-1 checkpoint supplies the encoder for embed / reconstruct; captions keep the converted one.
    stage1 = VLV(preset("tiny"))
    stage1.set_trainable(STAGE1_PARTS)
    stage1.save_pretrained(tmp_path / "stage1")
    with_stage1 = vlv.load(converted, stage1=tmp_path / "stage1")
    torch.testing.assert_close(with_stage1.embed(image), vlv.load(tmp_path / "stage1").embed(image))
    assert with_stage1.caption(image, max_new_tokens=4) == model.caption(image, max_new_tokens=4)
    args = ["reconstruct", "--model", str(converted), "--stage1", str(tmp_path / "stage1"), "--steps", "1"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*args, "--out", str(tmp_path / "rec"), str(tmp_path / "red.png")]) == 0
    assert not [w for w in caught if "needs a stage-1 encoder" in str(w.message)]
    assert (tmp_path / "rec" / "red.png").is_file()


def test_position_table_follows_the_file():
    # Florence-2 clones after its 4k-context commit hold 4098 BART position rows; the converted arch takes them.
    table = {FL + "language_model.model.encoder.embed_positions.weight": torch.empty(4098, 1)}
    report = ConversionReport()
    config = _fit_positions(preset("tiny"), table, report)
    assert config.encoder.arch["text_config"]["max_position_embeddings"] == 4096
    assert "4096" in report.format()
    assert _fit_positions(preset("tiny"), {}, ConversionReport()) == preset("tiny")

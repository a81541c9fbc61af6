import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import vlv
from vlv.images import to_batch
from vlv.loading import CheckpointMismatchError
from vlv.model import compose_embeddings


def test_compose_equal_split_takes_leading_tokens():
    zs = torch.stack([torch.full((77, 4), float(i)) for i in range(3)])  # image i is all i
    z = compose_embeddings(zs)
    assert z.shape == (1, 77, 4)
    assert z[0, :26, 0].eq(0).all() and z[0, 26:52, 0].eq(1).all() and z[0, 52:, 0].eq(2).all()


def test_compose_custom_split_and_errors():
    zs = torch.arange(2 * 77).float().view(2, 77, 1)
    z = compose_embeddings(zs, [10, 67])
    assert torch.equal(z[0, :10], zs[0, :10]) and torch.equal(z[0, 10:], zs[1, :67])
    with pytest.raises(ValueError, match="sum"):
        compose_embeddings(zs, [10, 10])


def test_compose_batched_equals_one_by_one():
    zs = torch.randn(3, 2, 77, 5, generator=torch.Generator().manual_seed(0))  # 3 compositions of 2 images each
    batched = compose_embeddings(zs)
    assert batched.shape == (3, 77, 5)
    for p in range(3):
        assert torch.equal(batched[p : p + 1], compose_embeddings(zs[p]))


def test_autoencoder_loss_with_compositions_is_the_loss_of_spliced_z(tiny_model):
    g = torch.Generator().manual_seed(0)
    images, sources = torch.rand(2, 3, 32, 32, generator=g), torch.rand(1, 2, 3, 32, 32, generator=g)
    composites = torch.rand(1, 3, 32, 32, generator=g)
    with torch.no_grad():
        loss = tiny_model.autoencoder_loss(
            images, torch.Generator().manual_seed(1), noises_per_image=2, compositions=(sources, composites)
        )
        # by hand: z of the sources spliced (equal split), the composite as the denoising target
        z = torch.cat([tiny_model.encoder(images), compose_embeddings(tiny_model.encoder(sources[0]))])
        gen = torch.Generator().manual_seed(1)
        targets = to_batch(torch.cat([images, composites]), tiny_model.config.diffusion.image_size)
        latents = tiny_model.diffusion.encode_images(targets, gen)
        c = tiny_model.diffusion.condition(z)
        by_hand = tiny_model.diffusion.denoising_loss(latents.repeat_interleave(2, 0), c.repeat_interleave(2, 0), gen)
        plain = tiny_model.autoencoder_loss(images, torch.Generator().manual_seed(1), noises_per_image=2)
    assert torch.allclose(loss, by_hand, rtol=1e-5)
    assert not torch.allclose(loss, plain)


def test_api_shapes(tiny_model, images):
    captions = tiny_model.caption(images)
    assert isinstance(captions, list) and len(captions) == 2 and all(isinstance(c, str) for c in captions)
    recon = tiny_model.reconstruct(images, steps=2, seed=0)
    assert recon.shape == (2, 3, 16, 16) and 0 <= recon.min() and recon.max() <= 1
    assert torch.equal(recon, tiny_model.reconstruct(images, steps=2, seed=0))
    assert tiny_model.compose(images, steps=2).shape == (1, 3, 16, 16)


def test_images_as_pil_paths_or_tensor_agree(tiny_model, tmp_path):
    arr = (torch.rand(40, 56, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
    pil = Image.fromarray(arr)
    pil.save(tmp_path / "x.png")
    from_pil = tiny_model.embed([pil])
    from_path = tiny_model.embed([tmp_path / "x.png"])
    assert torch.equal(from_pil, from_path)
    tensor = torch.from_numpy(arr).permute(2, 0, 1).float().unsqueeze(0) / 255
    from_tensor = tiny_model.embed(tensor)
    assert (from_tensor - from_pil).abs().max() < 0.05 * from_pil.abs().max()  # different resamplers, same image


def test_bad_image_inputs_have_clear_errors(tiny_model, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        tiny_model.embed([tmp_path / "broken.png"])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        tiny_model.embed([tmp_path / "missing.png"])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny_model.embed(torch.rand(2, 1, 8, 8))


def test_save_load_round_trip_is_bitwise(tiny_model, images, tmp_path):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    again = vlv.load(tmp_path / "ckpt")
    ref = tiny_model.state_dict()
    loaded = again.state_dict()
    assert loaded.keys() == ref.keys()
    for k, v in loaded.items():
        assert torch.equal(v, ref[k]), k
    assert torch.equal(again.embed(images), tiny_model.embed(images))
    assert again.caption(images) == tiny_model.caption(images)
    assert again.config == vlv.VLVConfig.from_dict(json.loads((tmp_path / "ckpt/config.json").read_text()))


def test_a_reloaded_model_saves_a_self_contained_copy(tiny_model, images, tmp_path):
    import shutil

    tiny_model.save_pretrained(tmp_path / "a")
    vlv.load(tmp_path / "a").save_pretrained(tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    assert torch.equal(vlv.load(tmp_path / "b").reconstruct(images, steps=2), tiny_model.reconstruct(images, steps=2))


def _tamper(path, edit):
    state = load_file(path)
    edit(state)
    save_file(state, path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("encoder.queries"), "missing keys: encoder.queries"),
        (lambda s: s.__setitem__("encoder.extra_weight", torch.zeros(3)), "unexpected keys: encoder.extra_weight"),
        (
            lambda s: s.__setitem__("captioner.projector.0.bias", torch.zeros(5)),
            "mis-shaped keys: captioner.projector.0.bias",
        ),
    ],
)
def test_tampered_checkpoint_names_the_key(tiny_model, tmp_path, edit, message):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    _tamper(str(tmp_path / "ckpt/model.safetensors"), edit)
    with pytest.raises(CheckpointMismatchError, match=message):
        vlv.load(tmp_path / "ckpt")


def test_loading_a_non_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        vlv.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no VLV checkpoint"):
        vlv.load(tmp_path / "nowhere/model")
    with pytest.raises(ValueError, match="unknown preset"):
        vlv.load("tinyy")


def test_trained_weights_exclude_the_frozen_sources(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "ckpt")
    keys = load_file(str(tmp_path / "ckpt/model.safetensors")).keys()
    assert not any(k.startswith("encoder.florence.vision_tower") for k in keys)
    assert not any(k.startswith("diffusion.") for k in keys)
    assert any(k.startswith("captioner.llm.") for k in keys) and "encoder.queries" in keys
    config = json.loads((tmp_path / "ckpt/config.json").read_text())
    assert config["diffusion"]["source"] == "teacher" and config["encoder"]["source"] == "florence"

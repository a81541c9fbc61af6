import dataclasses

import pytest
import torch
import torch.nn.functional as F
from transformers import Florence2Config, Florence2ForConditionalGeneration

from vlv.encoder import VLVEncoder, build_florence
from vlv.images import bicubic_resize
from vlv.model import VLV
from vlv.presets import STAGE1_PARTS


def test_z_shape(tiny_model, images):
    z = tiny_model.embed(images)
    assert z.shape == (2, 77, tiny_model.config.encoder.z_dim)
    assert torch.isfinite(z).all()


def test_seeded_builds_are_identical(tiny_config, images):
    a, b = VLV(tiny_config), VLV(tiny_config)
    assert torch.equal(a.embed(images), b.embed(images))
    for (ka, va), (kb, vb) in zip(a.encoder.state_dict().items(), b.encoder.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    torch.manual_seed(123)  # the global RNG plays no part: each part has its own seeded stream
    assert torch.equal(VLV(tiny_config).embed(images), a.embed(images))
    c = VLV(dataclasses.replace(tiny_config, seed=1))
    assert not torch.equal(a.embed(images), c.embed(images))


def test_only_the_trainable_encoder_parts_get_gradients(tiny_config, images):
    model = VLV(tiny_config)
    model.set_trainable(STAGE1_PARTS)
    model.autoencoder().train()({"images": images}).backward()
    enc = model.encoder
    for name, p in enc.florence.vision_tower.named_parameters():
        assert p.grad is None, name
    for name, p in enc.florence.multi_modal_projector.named_parameters():
        assert p.grad is None, name
    assert enc.queries.grad is not None and enc.queries.grad.abs().sum() > 0
    assert all(p.grad is not None for p in enc.projection.parameters())
    bart_grads = [p.grad for p in enc.florence.language_model.decoder.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in bart_grads)
    for name, p in [*model.conditioner.named_parameters(), *model.decoder.named_parameters()]:
        assert p.grad is None, name


def test_set_trainable(tiny_model):
    enc = tiny_model.encoder
    enc.set_trainable(["queries"])
    try:
        assert enc.queries.requires_grad
        assert not any(p.requires_grad for p in enc.projection.parameters())
        assert not any(p.requires_grad for p in enc.florence.language_model.parameters())
        with pytest.raises(ValueError, match="eyes"):
            enc.set_trainable(["eyes"])
    finally:
        enc.set_trainable(())


def test_vision_side_stays_in_eval_mode(tiny_config):
    model = VLV(tiny_config)
    model.set_trainable(STAGE1_PARTS)
    model.autoencoder().train()
    # the frozen teacher too: no dropout in frozen parts, whatever the caller does (SD's CLIP has dropout settings)
    assert not model.conditioner.text_encoder.training and not model.decoder.unet.training
    assert model.encoder.florence.language_model.training
    assert not model.encoder.florence.vision_tower.training
    assert not model.encoder.florence.multi_modal_projector.training


def test_pretrained_florence_loads_strictly(tmp_path, tiny_config):
    arch = tiny_config.encoder.arch
    torch.manual_seed(123)
    reference = Florence2ForConditionalGeneration(Florence2Config(**arch))
    reference.save_pretrained(tmp_path / "florence")
    cfg = dataclasses.replace(tiny_config.encoder, source=str(tmp_path / "florence"))
    loaded = build_florence(cfg, pretrained=True)
    ref_state = reference.model.state_dict()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    encoder = VLVEncoder(cfg, loaded, cfg.prompt_token_ids)
    assert encoder(torch.rand(1, 3, 64, 64)).shape == (1, 77, cfg.z_dim)


def test_a_trainable_vision_side_learns_and_is_saved(tiny_config, images, tmp_path):
    model = VLV(tiny_config)
    model.set_trainable(["encoder.vision", "encoder.queries", "encoder.projection"])
    autoencoder = model.autoencoder().train()
    assert model.encoder.florence.vision_tower.training
    autoencoder({"images": images}).backward()
    grads = [p.grad for p in model.encoder.florence.vision_tower.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in model.encoder.florence.language_model.parameters())
    model.save_pretrained(tmp_path / "ckpt")
    again = VLV.from_pretrained(tmp_path / "ckpt")
    key = next(iter(model.encoder.florence.vision_tower.state_dict()))
    assert torch.equal(
        again.encoder.florence.vision_tower.state_dict()[key], model.encoder.florence.vision_tower.state_dict()[key]
    )


def test_several_noises_per_image_share_one_encoder_pass(tiny_model, images):
    calls = []
    hook = tiny_model.encoder.register_forward_hook(lambda module, args, out: calls.append(out.shape[0]))
    try:
        with torch.no_grad():
            torch.manual_seed(0)
            one = tiny_model.autoencoder(noises_per_image=1)({"images": images})
            torch.manual_seed(0)
            four = tiny_model.autoencoder(noises_per_image=4)({"images": images})
    finally:
        hook.remove()
    assert calls == [2, 2]  # one encoder pass over the 2 images, whatever K
    assert one.ndim == four.ndim == 0 and not torch.equal(one, four)


@pytest.mark.parametrize("open_cross_attention", [True, False])
def test_a_random_init_encoder_sees_the_image_from_step_0_when_its_cross_attention_is_open(open_cross_attention):
    """The shapes preset at step 0: the across-image share of z (std over images / rms) is ≈ 0.006 at BART's own
    init (std 0.02) and ≈ 0.1 with the decoder's cross-attention drawn at d_model^-1/2 (the default)."""
    from vlv.shapes import preset
    from vlv.shapes.stage1 import probe_scenes, renders

    config = preset.config(teacher=None)
    config = dataclasses.replace(
        config, encoder=dataclasses.replace(config.encoder, open_cross_attention=open_cross_attention)
    )
    with torch.no_grad():
        z = VLV(config).encoder.eval()(renders(probe_scenes(0)))
    share = (z.std(0).pow(2).mean().sqrt() / z.pow(2).mean().sqrt()).item()
    assert (share > 0.05) if open_cross_attention else (share < 0.02), share


@pytest.mark.parametrize(("size", "to"), [((16, 16), (64, 64)), ((24, 40), (32, 20)), ((384, 384), (768, 768))])
def test_the_encoder_resize_is_torch_bicubic(size, to):
    """The encoder resizes its input with `bicubic_resize` (two matrix products): it must give what
    `F.interpolate(mode="bicubic", align_corners=False)` gives, so a checkpoint trained either way reads the same
    pixels, upsampling (the shapes and paper sizes) or down."""
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(x, size=to, mode="bicubic", align_corners=False)
    assert torch.allclose(bicubic_resize(x, to), expected, atol=1e-5)
    assert bicubic_resize(x, size) is x  # nothing to do at the input's own size

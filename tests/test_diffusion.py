import dataclasses

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from torch.utils.flop_counter import FlopCounterMode

from vlv.conditioning import build_text_conditioner
from vlv.config import SampleOptions
from vlv.diffusion import build_diffusion_decoder, cross_attention_layers, shares_context
from vlv.train.flops import ATTENTION_ON_CPU

WIDTH = 32  # the tiny text encoder's width


def _decoder(tiny_config, **changes):
    torch.manual_seed(0)
    return build_diffusion_decoder(dataclasses.replace(tiny_config.teacher, **changes), pretrained=False)


def _c(decoder, B=2, seed=0):
    return torch.randn(B, 77, WIDTH, generator=torch.Generator().manual_seed(seed))


def _sample(dec, c, *, seed=0, **options):
    opts = dataclasses.replace(SampleOptions(steps=2), **options)
    return dec.sample(c, _c(dec, 1, seed=99), opts, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_regresses_the_schedulers_target(tiny_config, prediction_type):
    scheduler = {**tiny_config.teacher.scheduler, "prediction_type": prediction_type}
    dec = _decoder(tiny_config, scheduler=scheduler)
    latents = torch.rand(2, 3, 16, 16) * 2 - 1
    c = _c(dec)
    loss = dec.denoising_loss(latents, c, torch.Generator().manual_seed(5))
    # Recompute by hand with the same random draws.
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, 1000, (2,), generator=g)
    noisy = dec.scheduler.add_noise(latents, noise, t)
    target = noise if prediction_type == "epsilon" else dec.scheduler.get_velocity(latents, noise, t)
    with torch.no_grad():
        pred = dec.unet(noisy, t, encoder_hidden_states=c).sample
    assert loss.ndim == 0
    assert torch.allclose(loss, torch.nn.functional.mse_loss(pred, target), atol=1e-6)
    if prediction_type == "v_prediction":  # the two targets differ, so the test tells them apart
        assert not torch.allclose(target, noise)


def test_unsupported_prediction_type_is_an_error(tiny_config):
    dec = _decoder(tiny_config, scheduler={**tiny_config.teacher.scheduler, "prediction_type": "sample"})
    with pytest.raises(ValueError, match="sample"):
        dec.denoising_loss(torch.zeros(1, 3, 16, 16), _c(dec, 1))


def test_loss_reaches_c_but_not_teacher_weights(tiny_config):
    dec = _decoder(tiny_config)
    c = _c(dec).requires_grad_(True)
    dec.denoising_loss(torch.rand(2, 3, 16, 16), c).backward()
    assert c.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in dec.parameters())


def _copies(B=2, K=3, seed=0):
    """K noisy copies of each of B latents (grouped by latent), their noise and timesteps."""
    g = torch.Generator().manual_seed(seed)
    latents = (torch.rand(B, 3, 16, 16, generator=g) * 2 - 1).repeat_interleave(K, 0)
    return latents, torch.randn(latents.shape, generator=g), torch.randint(0, 1000, (B * K,), generator=g)


def test_copies_sharing_a_conditioning_get_the_loss_and_gradient_of_the_repeated_one(tiny_config):
    dec = _decoder(tiny_config)
    assert shares_context(dec.unet)
    latents, noise, t = _copies(K=3)
    c = _c(dec, 2).requires_grad_(True)
    shared = dec.denoising_loss(latents, c, noise=noise, t=t)  # each c row serves 3 consecutive latents
    (shared_grad,) = torch.autograd.grad(shared, c)
    repeated = dec.denoising_loss(latents, c.repeat_interleave(3, 0), noise=noise, t=t)
    (repeated_grad,) = torch.autograd.grad(repeated, c)
    assert torch.allclose(shared, repeated, rtol=1e-6)
    assert torch.allclose(shared_grad, repeated_grad, rtol=1e-4, atol=1e-9)
    # grouped, not tiled: latents 0-2 read c[0], latents 3-5 c[1]
    tiled = dec.denoising_loss(latents, c.repeat(3, 1, 1), noise=noise, t=t)
    assert not torch.allclose(shared, tiled, rtol=1e-6)


def test_a_shared_conditioning_is_projected_once_per_group(tiny_config):
    dec = _decoder(tiny_config)
    latents, noise, t = _copies(B=2, K=3)
    c = _c(dec, 2)

    def flops(c):
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=ATTENTION_ON_CPU) as counter:
            dec.denoising_loss(latents, c, noise=noise, t=t)
        return counter.get_total_flops()

    layers = cross_attention_layers(dec.unet)
    per_row = sum(2 * 2 * 77 * m.to_k.in_features * m.to_k.out_features for m in layers)  # keys and values
    assert layers and flops(c.repeat_interleave(3, 0)) - flops(c) == per_row * 2 * (3 - 1)  # 2 of each 3 saved


def test_a_cross_attention_processor_of_ones_own_gets_the_conditioning_repeated(tiny_config):
    dec = _decoder(tiny_config)
    latents, noise, t = _copies(K=2)
    c = _c(dec, 2)
    want = dec.denoising_loss(latents, c, noise=noise, t=t)
    dec.unet.set_attn_processor(AttnProcessor2_0())  # e.g. a user's own processor
    assert not shares_context(dec.unet)
    assert torch.allclose(dec.denoising_loss(latents, c, noise=noise, t=t), want, rtol=1e-6)
    with pytest.raises(ValueError, match="cannot share"):
        dec.denoising_loss(latents[:3], c)


@pytest.mark.parametrize("sampler", ["dpm++", "ddpm"])
def test_sampling_is_seeded_and_in_range(tiny_config, sampler):
    dec = _decoder(tiny_config)
    c = _c(dec)
    a = _sample(dec, c, steps=3, sampler=sampler)
    b = _sample(dec, c, steps=3, sampler=sampler)
    other = _sample(dec, c, steps=3, sampler=sampler, seed=1)
    assert a.shape == (2, 3, 16, 16)
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, other)


def test_unknown_sampler_is_an_error(tiny_config):
    with pytest.raises(ValueError, match="dpm"):
        _sample(_decoder(tiny_config), torch.zeros(1, 77, 32), sampler="euler")


def test_guidance_zero_ignores_the_condition(tiny_config):
    dec = _decoder(tiny_config)
    a = _sample(dec, _c(dec, 1, 0), guidance=0.0, sampler="ddpm")
    b = _sample(dec, _c(dec, 1, 1), guidance=0.0, sampler="ddpm")
    c = _sample(dec, _c(dec, 1, 1), guidance=2.0, sampler="ddpm")
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_the_guidance_interval_guides_the_first_steps_and_runs_the_rest_conditional_alone(tiny_config):
    """guidance_interval 0.5 of 4 steps: the first 2 UNet calls carry both branches (batch 2B), the last 2 the
    conditional one alone (batch B); at 0 no step is guided, which is guidance 1 (the conditional prediction)."""
    dec = _decoder(tiny_config)
    c = _c(dec)
    batches = []
    hook = dec.unet.register_forward_hook(lambda module, args, out: batches.append(args[0].shape[0]))
    half = _sample(dec, c, steps=4, guidance=3.0, guidance_interval=0.5)
    hook.remove()
    assert batches == [4, 4, 2, 2]
    unguided = _sample(dec, c, steps=4, guidance=3.0, guidance_interval=0.0)
    assert torch.allclose(unguided, _sample(dec, c, steps=4, guidance=1.0), atol=1e-5)
    assert not torch.allclose(half, unguided, atol=1e-3)
    assert not torch.allclose(half, _sample(dec, c, steps=4, guidance=3.0), atol=1e-3)
    with pytest.raises(ValueError, match="guidance_interval must be in"):
        SampleOptions(guidance_interval=1.5)


def test_latent_space_teacher_with_a_vae(tiny_config):
    vae_arch = dict(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
    )
    unet_arch = {**tiny_config.teacher.unet_arch, "in_channels": 4, "out_channels": 4, "sample_size": 8}
    dec = _decoder(tiny_config, vae_arch=vae_arch, unet_arch=unet_arch)
    images = torch.rand(2, 3, 16, 16)
    latents = dec.encode_images(images, torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 8, 8)
    assert dec.vae_scale == 2
    assert dec.denoising_loss(latents, _c(dec)).ndim == 0
    assert _sample(dec, _c(dec)).shape == (2, 3, 16, 16)


def test_teacher_saves_in_diffusers_layout_and_reloads_bitwise(tiny_config, tmp_path):
    dec, text = _decoder(tiny_config), build_text_conditioner(tiny_config.teacher, pretrained=False)
    dec.save_pretrained(str(tmp_path / "teacher"))
    text.save_pretrained(str(tmp_path / "teacher"))
    for sub in ("text_encoder", "tokenizer", "unet", "scheduler"):
        assert (tmp_path / "teacher" / sub).is_dir(), sub
    teacher = dataclasses.replace(tiny_config.teacher, source=str(tmp_path / "teacher"))
    again, text_again = (
        build_diffusion_decoder(teacher, pretrained=True),
        build_text_conditioner(teacher, pretrained=True),
    )
    for module, reloaded in ((dec, again), (text, text_again)):
        ref = module.state_dict()
        for k, v in reloaded.state_dict().items():
            assert torch.equal(v, ref[k]), k
    assert torch.equal(text_again.encode_prompts(["a red circle"]), text.encode_prompts(["a red circle"]))

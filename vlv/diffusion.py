"""The frozen diffusion decoder of the teacher: UNet, optional VAE and noise scheduler.

It follows the layout of a diffusers Stable Diffusion pipeline directory (unet/, vae/, scheduler/; the text encoder
and tokenizer are `vlv.conditioning.TextConditioner`), so SD 2.1-base and the shapes teacher load the same way.
Provides the stage-1 denoising loss (whose target follows the scheduler's `prediction_type`) and
classifier-free-guided sampling, unrolled in one function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn

from vlv.config import SampleOptions, TeacherConfig

SAMPLERS = ("dpm++", "ddpm")


class SharedContextAttention(AttnProcessor2_0):
    """The teacher's cross-attention when K consecutive rows of the batch share one conditioning (the noisy copies
    of one image in stage 1): the conditioning comes with one row per group, (B, L, D) against hidden states
    (B·K, N, C), so its keys and values are projected once per group instead of once per copy, and the K copies'
    queries attend to them as one sequence of K·N. The same attention as projecting the repeated conditioning, to
    float rounding. With a conditioning per row (sampling, K = 1) it is diffusers' own SDPA processor."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        context = encoder_hidden_states
        if context is None or context.shape[0] == hidden_states.shape[0]:
            return super().__call__(attn, hidden_states, context, attention_mask, temb, **kwargs)
        B, (BK, N, _) = context.shape[0], hidden_states.shape
        unsupported = {"an attention mask": attention_mask is not None, "a spatial norm": attn.spatial_norm is not None,
                       "a group norm": attn.group_norm is not None, "a cross norm": bool(attn.norm_cross),
                       "4-d hidden states": hidden_states.ndim != 3}  # fmt: skip
        if BK % B or any(unsupported.values()):
            why = [name for name, hit in unsupported.items() if hit] or [f"{BK} rows for {B} conditionings"]
            raise ValueError(f"a conditioning shared by several rows is not supported with {', '.join(why)}")
        heads = attn.heads
        query = attn.to_q(hidden_states)  # (B·K, N, inner)
        key, value = attn.to_k(context), attn.to_v(context)  # (B, L, inner): once per conditioning
        head_dim = key.shape[-1] // heads
        # The rows are grouped by conditioning, so a group's K·N queries read as one sequence.
        query = query.reshape(B, (BK // B) * N, heads, head_dim).transpose(1, 2)
        key, value = (x.view(B, -1, heads, head_dim).transpose(1, 2) for x in (key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(query, key, value)  # (B, heads, K·N, head_dim)
        out = out.transpose(1, 2).reshape(BK, N, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def cross_attention_layers(unet: UNet2DConditionModel) -> list[Attention]:
    return [m for m in unet.modules() if isinstance(m, Attention) and m.is_cross_attention]


def share_context(unet: UNet2DConditionModel) -> None:
    """Give the UNet's cross-attention layers that run diffusers' default SDPA processor `SharedContextAttention`
    (others, e.g. a user's own processor, are left as they are)."""
    for layer in cross_attention_layers(unet):
        if type(layer.processor) is AttnProcessor2_0:
            layer.set_processor(SharedContextAttention())


def shares_context(unet: UNet2DConditionModel) -> bool:
    """Whether every cross-attention layer of `unet` takes a conditioning shared by consecutive rows."""
    return all(isinstance(layer.processor, SharedContextAttention) for layer in cross_attention_layers(unet))


class DiffusionDecoder(nn.Module):
    """Everything here is frozen: gradients flow *through* it into the conditioning, never into its weights."""

    def __init__(self, cfg: TeacherConfig, unet: UNet2DConditionModel, vae: AutoencoderKL | None, scheduler):
        super().__init__()
        self.cfg = cfg
        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler
        share_context(unet)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> DiffusionDecoder:
        return super().train(False)  # frozen teacher: always in eval mode

    def save_pretrained(self, directory: str) -> None:
        """Write `unet/`, `vae/` and `scheduler/` of a diffusers pipeline folder."""
        self.unet.save_pretrained(f"{directory}/unet")
        if self.vae is not None:
            self.vae.save_pretrained(f"{directory}/vae")
        self.scheduler.save_pretrained(f"{directory}/scheduler")

    @property
    def device(self) -> torch.device:
        return self.unet.device

    # ----- latents -----------------------------------------------------------------------------------------

    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """images: (B, 3, S, S) in [0, 1] → latents (B, C, h, w); pixel space when there is no VAE."""
        x = images * 2 - 1
        if self.vae is None:
            return x
        dist = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        return dist.sample(generator) * self.cfg.latent_scale

    def encode_moments(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, S, S) in [0, 1] → the VAE posterior's mean and log-variance, (B, 2C, h, w): all a latent
        cache needs to draw the same latents later (`latents_from_moments`)."""
        if self.vae is None:
            raise ValueError("this teacher works in pixel space: it has no VAE latents to encode")
        return self.vae.encode((images * 2 - 1).to(self.vae.dtype)).latent_dist.parameters

    def latents_from_moments(self, moments: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """A latent sample mean + std · noise from cached moments (B, 2C, h, w), scaled as `encode_images`."""
        dist = DiagonalGaussianDistribution(moments.float())
        return (dist.mean + dist.std * noise) * self.cfg.latent_scale

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, C, h, w) → images (B, 3, S, S) in [0, 1]."""
        if self.vae is not None:
            latents = self.vae.decode(latents / self.cfg.latent_scale).sample
        return ((latents.float() + 1) / 2).clamp(0, 1)

    # ----- training ----------------------------------------------------------------------------------------

    def denoising_loss(
        self,
        latents: torch.Tensor,
        c: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        noise: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Plain diffusion loss of the frozen UNet conditioned on c; gradients reach c (and through it z).

        latents: (B, C, h, w); c: (B, 77, D), or (B / K, 77, D) when each conditioning serves K consecutive latents
        (the noisy copies of one image; the teacher then projects each conditioning once, `SharedContextAttention`).
        t ~ U{0..T-1} and fresh noise per sample, drawn from `generator`
        (the global torch RNG when None, which the training loop saves and restores) unless given as `noise`
        (B, C, h, w) and `t` (B,).
        The regression target is ε or v, whichever the teacher's scheduler was trained to predict.
        """
        B = latents.shape[0]
        if B % c.shape[0]:
            raise ValueError(f"{B} latents cannot share {c.shape[0]} conditionings (each must serve as many latents)")
        if c.shape[0] != B and not shares_context(self.unet):  # a cross-attention processor of the user's own
            c = c.repeat_interleave(B // c.shape[0], dim=0)
        T = self.scheduler.config.num_train_timesteps
        if noise is None:
            noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        if t is None:
            t = torch.randint(0, T, (B,), generator=generator, device=latents.device)
        noisy = self.scheduler.add_noise(latents, noise, t)
        prediction_type = self.scheduler.config.prediction_type
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, t)
        else:
            raise ValueError(f"unsupported teacher prediction_type '{prediction_type}' (epsilon or v_prediction)")
        pred = self.unet(noisy, t, encoder_hidden_states=c.to(self.unet.dtype)).sample  # (B, C, h, w)
        return F.mse_loss(pred.float(), target.float())

    # ----- sampling ----------------------------------------------------------------------------------------

    def make_sampler(self, options: SampleOptions):
        """A sampling scheduler built from the teacher's own scheduler config (keeps its `prediction_type`)."""
        # Every value explicit (diffusers drops keys it marks as defaults when converting between classes, which
        # made a freshly built and a reloaded teacher sample differently); the spacing is our sampling choice.
        config = {k: v for k, v in self.scheduler.config.items() if not k.startswith("_")}
        config["timestep_spacing"] = options.timestep_spacing
        if options.sampler == "dpm++":
            return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
        if options.sampler == "ddpm":
            return DDPMScheduler.from_config(config)
        raise ValueError(f"unknown sampler '{options.sampler}'; choose one of {SAMPLERS}")

    @torch.no_grad()
    def sample(
        self,
        c: torch.Tensor,
        uncond: torch.Tensor,
        options: SampleOptions,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Classifier-free-guided sampling. c: (B, 77, D) → images (B, 3, S, S) in [0, 1].

        uncond: (1, 77, D), the conditioning of the unconditional branch (the teacher's empty prompt). Steps after
        the first `options.guidance_interval` of them run the conditional branch alone.
        """
        scheduler = self.make_sampler(options)
        scheduler.set_timesteps(options.steps, device=self.device)
        B, guidance = c.shape[0], options.guidance
        cond = torch.cat([uncond.expand(B, -1, -1), c]).to(self.unet.dtype)  # (2B, 77, D)
        channels = self.unet.config.in_channels
        size = self.cfg.image_size // self.vae_scale
        x = torch.randn((B, channels, size, size), generator=generator, device=self.device, dtype=self.unet.dtype)
        x = x * scheduler.init_noise_sigma
        guided = round(options.guidance_interval * len(scheduler.timesteps))  # the first, noisiest steps
        for i, t in enumerate(scheduler.timesteps):
            if i < guided:
                inp = scheduler.scale_model_input(torch.cat([x, x]), t)
                pred_uncond, pred_cond = self.unet(inp, t, encoder_hidden_states=cond).sample.chunk(2)
                pred = pred_uncond + guidance * (pred_cond - pred_uncond)
            else:  # the conditional branch alone
                pred = self.unet(scheduler.scale_model_input(x, t), t, encoder_hidden_states=cond[B:]).sample
            x = scheduler.step(pred, t, x, generator=generator).prev_sample
        return self.decode_latents(x)

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell: 2^(number of VAE down blocks − 1), 1 in pixel space."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def build_diffusion_decoder(cfg: TeacherConfig, *, pretrained: bool) -> DiffusionDecoder:
    """From the teacher's pipeline folder (`unet/`, `vae/`, `scheduler/`) when `pretrained`, else random init."""
    if pretrained and cfg.source is not None:
        src, rev = cfg.source, cfg.revision
        # An explicit dtype (the pipeline's files may be fp16 / bf16): parts are cast to the model's dtype after.
        unet = UNet2DConditionModel.from_pretrained(
            src, revision=rev, subfolder="unet", use_safetensors=True, torch_dtype=torch.float32
        )
        vae = None
        if cfg.vae_arch is not None:
            vae = AutoencoderKL.from_pretrained(
                src, revision=rev, subfolder="vae", use_safetensors=True, torch_dtype=torch.float32
            )
        return DiffusionDecoder(cfg, unet, vae, DDPMScheduler.from_pretrained(src, revision=rev, subfolder="scheduler"))
    vae = AutoencoderKL(**cfg.vae_arch) if cfg.vae_arch is not None else None
    return DiffusionDecoder(cfg, UNet2DConditionModel(**cfg.unet_arch), vae, DDPMScheduler(**cfg.scheduler))

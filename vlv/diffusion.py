"""The frozen diffusion decoder (teacher): CLIP text encoder, UNet, optional VAE and noise scheduler.

It follows the layout of a diffusers Stable Diffusion pipeline directory (text_encoder/, tokenizer/, unet/, vae/,
scheduler/), so SD 2.1-base and the shapes teacher load the same way. Provides the stage-1 denoising loss (whose
target follows the scheduler's `prediction_type`) and classifier-free-guided sampling, unrolled in one function.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from torch import nn
from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

from vlv.conditioning import encode_embeddings, encode_token_ids
from vlv.config import DiffusionConfig
from vlv.loading import load_hf_strict
from vlv.tokenizer import build_word_tokenizer

SAMPLERS = ("dpm++", "ddpm")


class DiffusionDecoder(nn.Module):
    """Everything here is frozen: gradients flow *through* it into the encoder, never into its weights."""

    def __init__(self, cfg: DiffusionConfig, *, pretrained: bool = True):
        super().__init__()
        self.cfg = cfg
        src, rev = cfg.source, cfg.revision
        if pretrained and src is not None:
            self.text_encoder = load_hf_strict(CLIPTextModel, src, revision=rev, subfolder="text_encoder")
            self.tokenizer = AutoTokenizer.from_pretrained(src, revision=rev, subfolder="tokenizer")
            self.unet = UNet2DConditionModel.from_pretrained(src, revision=rev, subfolder="unet", use_safetensors=True)
            self.vae = None
            if cfg.vae_arch is not None:
                self.vae = AutoencoderKL.from_pretrained(src, revision=rev, subfolder="vae", use_safetensors=True)
            self.scheduler = DDPMScheduler.from_pretrained(src, revision=rev, subfolder="scheduler")
        else:
            self.text_encoder = CLIPTextModel(CLIPTextConfig(**cfg.text_encoder_arch))
            # Random init: a word-level tokenizer over `vocabulary`. An architecture-only build of a pretrained
            # teacher with no vocabulary (SD) has no tokenizer; it is never used to encode.
            self.tokenizer = build_word_tokenizer(cfg.vocabulary, wrap_bos_eos=True) if cfg.vocabulary else None
            self.unet = UNet2DConditionModel(**cfg.unet_arch)
            self.vae = AutoencoderKL(**cfg.vae_arch) if cfg.vae_arch is not None else None
            self.scheduler = DDPMScheduler(**cfg.scheduler)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> DiffusionDecoder:
        return super().train(False)  # frozen teacher: always in eval mode

    def save_pretrained(self, directory: str) -> None:
        """Write the diffusers pipeline layout that `DiffusionConfig.source` can point at."""
        self.text_encoder.save_pretrained(f"{directory}/text_encoder")
        self.tokenizer.save_pretrained(f"{directory}/tokenizer")
        self.unet.save_pretrained(f"{directory}/unet")
        if self.vae is not None:
            self.vae.save_pretrained(f"{directory}/vae")
        self.scheduler.save_pretrained(f"{directory}/scheduler")

    # ----- conditioning ------------------------------------------------------------------------------------

    def condition(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, 77, D) caption embeddings → c: (B, 77, D) UNet conditioning."""
        return encode_embeddings(self.text_encoder, z)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text prompts → c: (B, 77, D), padded to the text encoder's length as the teacher was trained."""
        length = self.text_encoder.config.max_position_embeddings
        ids = self.tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        return encode_token_ids(self.text_encoder, ids.input_ids.to(self.device))

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

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, C, h, w) → images (B, 3, S, S) in [0, 1]."""
        if self.vae is not None:
            latents = self.vae.decode(latents / self.cfg.latent_scale).sample
        return ((latents.float() + 1) / 2).clamp(0, 1)

    # ----- training ----------------------------------------------------------------------------------------

    def denoising_loss(
        self, latents: torch.Tensor, c: torch.Tensor, generator: torch.Generator | None = None, *, t_min: int = 0
    ) -> torch.Tensor:
        """Plain diffusion loss of the frozen UNet conditioned on c; gradients reach c (and through it z).

        latents: (B, C, h, w); c: (B, 77, D). t ~ U{t_min..T-1} (the paper: t_min = 0) and fresh noise per sample.
        The regression target is ε or v, whichever the teacher's scheduler was trained to predict.
        """
        B = latents.shape[0]
        T = self.scheduler.config.num_train_timesteps
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        t = torch.randint(t_min, T, (B,), generator=generator, device=latents.device)
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

    def make_sampler(self, name: str):
        """A sampling scheduler built from the teacher's own scheduler config (keeps its `prediction_type`)."""
        # Every value explicit (diffusers drops keys it marks as defaults when converting between classes, which
        # made a freshly built and a reloaded teacher sample differently); the spacing is our sampling choice.
        config = {k: v for k, v in self.scheduler.config.items() if not k.startswith("_")}
        config["timestep_spacing"] = self.cfg.timestep_spacing
        if name == "dpm++":
            return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
        if name == "ddpm":
            return DDPMScheduler.from_config(config)
        raise ValueError(f"unknown sampler '{name}'; choose one of {SAMPLERS}")

    @torch.no_grad()
    def sample(
        self,
        c: torch.Tensor,
        *,
        steps: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Classifier-free-guided sampling. c: (B, 77, D) → images (B, 3, S, S) in [0, 1].

        The unconditional branch is the text encoder's encoding of the empty prompt.
        """
        steps = steps or self.cfg.sample_steps
        guidance = self.cfg.guidance if guidance is None else guidance
        scheduler = self.make_sampler(sampler or self.cfg.sampler)
        scheduler.set_timesteps(steps, device=self.device)
        B = c.shape[0]
        uncond = self.encode_prompts([""]).expand(B, -1, -1)
        cond = torch.cat([uncond, c]).to(self.unet.dtype)  # (2B, 77, D)
        channels = self.unet.config.in_channels
        size = self.cfg.image_size // self.vae_scale
        x = torch.randn((B, channels, size, size), generator=generator, device=self.device, dtype=self.unet.dtype)
        x = x * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(torch.cat([x, x]), t)
            pred_uncond, pred_cond = self.unet(inp, t, encoder_hidden_states=cond).sample.chunk(2)
            pred = pred_uncond + guidance * (pred_cond - pred_uncond)
            x = scheduler.step(pred, t, x, generator=generator).prev_sample
        return self.decode_latents(x)

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell: 2^(number of VAE down blocks − 1), 1 in pixel space."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

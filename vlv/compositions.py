"""The two trainable compositions of VLV, each a plain `nn.Module` with `forward(batch) → loss`.

    Autoencoder (stage 1, images only):  image ─► encoder ─► z ─► frozen CLIP ─► c ─► frozen UNet (+VAE) ─► loss
    Captioner   (stage 2, pairs):        image ─► encoder ─► z ─► frozen CLIP ─► c ─► ψ ─► LLM ─► next-token loss

They hold the very part modules of a `VLV` (nothing is copied), so training a composition trains the model. Because
each is an ordinary module whose forward returns the loss, DDP / accelerate wrap them as they are; only the
parameters a stage trains require grad (see `VLV.set_trainable`). Randomness (noise, timesteps, VAE sampling) comes
from the global torch RNG, which the training loop saves and restores — or, when the batch carries `seeds`, from
one generator per image, so that an image draws the same noise however the global batch is split across processes
and micro-batches (what makes a 2-process run equal a 1-process run).

A batch is a dict: `images` (B, 3, H, W) in [0, 1] always; `captions` (list of B strings) for the captioner, and
optionally `keys` (B hashables naming the images: the captioner then reuses a frozen encoder's output); optionally
`seeds` (B,) int64, `moments` (B, 2C, h, w) — the VAE posterior of each image from a latent cache, so the VAE does
not run — and `sources` (P, 2, 3, H, W) with `composites` (P, 3, H, W) for the auto-encoder's composition term.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vlv.captioner import CaptionDecoder
from vlv.conditioning import TextConditioner
from vlv.diffusion import DiffusionDecoder
from vlv.encoder import VLVEncoder
from vlv.images import to_batch


def compose_embeddings(zs: torch.Tensor, splits: list[int] | None = None) -> torch.Tensor:
    """Splice the leading tokens of several caption embeddings into one.

    zs: (K, L, D), one z per image, or (P, K, L, D) for P compositions at once. splits: tokens taken from each
    (sums to L); default an equal split, the remainder going to the first images. Returns (1, L, D) (or (P, L, D)):
    z_1[:n_1] ; z_2[:n_2] ; … ; z_K[:n_K].
    """
    batched = zs if zs.dim() == 4 else zs.unsqueeze(0)
    K, L = batched.shape[1:3]
    if splits is None:
        splits = [L // K + (1 if i < L % K else 0) for i in range(K)]
    if len(splits) != K or sum(splits) != L or min(splits) < 1:
        raise ValueError(f"splits {splits} must give each of {K} images ≥ 1 token and sum to {L}")
    return torch.cat([batched[:, i, :n] for i, n in enumerate(splits)], dim=1)


# How the K noisy copies of an image draw their timesteps. "uniform": each t ~ U{0..T-1} on its own (the paper).
# "stratified": one u ~ U[0, 1) per image and t_k = ⌊T·((u + k/K) mod 1)⌋, so the K copies cover K equal strata of
# [0, T) — each t is still uniform (the loss is unchanged in expectation) but an image's gradient no longer depends
# on whether its draws happened to cluster; with K = 1 it is uniform.
TIMESTEPS = ("uniform", "stratified")


def antithetic_pairs(half: torch.Tensor) -> torch.Tensor:
    """(N, ...) noises ε → (2N, ...) with rows 2i, 2i + 1 = ε_i, −ε_i: an image's copies in pairs (K even)."""
    return torch.stack([half, -half], dim=1).flatten(0, 1)


def draw_timesteps(
    images: int,
    K: int,
    T: int,
    how: str,
    generator: torch.Generator | None = None,
    device=None,
    logit_normal: tuple[float, float] | None = None,
) -> torch.Tensor:
    """(images · K,) timesteps, image-major (the K copies of image b at b·K … b·K + K − 1).

    logit_normal: (mean, std) — t/T is drawn from a logit-normal density instead of a uniform one: each uniform draw u
    (independent or stratified, as `how` says) becomes sigmoid(mean + std · Φ⁻¹(u)), so stratified copies still
    cover K equal-probability strata. A negative mean puts more of the draws at low noise."""
    if how == "uniform" and logit_normal is None:
        return torch.randint(0, T, (images * K,), generator=generator, device=device)
    if how == "uniform":
        u = torch.rand(images * K, generator=generator, device=device)
    else:
        u = torch.rand(images, 1, generator=generator, device=device)
        u = (u + torch.arange(K, device=device) / K) % 1.0
    if logit_normal is not None:
        mean, std = logit_normal
        u = u.clamp(1e-6, 1 - 1e-6)
        u = torch.sigmoid(mean + std * math.sqrt(2.0) * torch.erfinv(2 * u - 1))
    return (u * T).long().clamp_(0, T - 1).flatten()


class Autoencoder(nn.Module):
    """Stage 1 (paper §3.1): the frozen teacher's denoising loss conditioned on CLIP(z)."""

    def __init__(
        self,
        encoder: VLVEncoder,
        conditioner: TextConditioner,
        decoder: DiffusionDecoder,
        *,
        noises_per_image: int = 1,
        timesteps: str = "uniform",
        timestep_logit_normal: tuple[float, float] | None = None,
        antithetic_noise: bool = False,
    ):
        """timesteps, timestep_logit_normal: how the K copies spread their t, and its density (uniform by default,
        as in the paper; see `draw_timesteps`). antithetic_noise: the K copies of an image come in pairs whose noises
        are ε and −ε (K even)."""
        super().__init__()
        if timesteps not in TIMESTEPS:
            raise ValueError(f"unknown timestep sampling '{timesteps}'; choose one of {TIMESTEPS}")
        if timestep_logit_normal is not None and not timestep_logit_normal[1] > 0:
            raise ValueError(f"the logit-normal timestep density needs a positive std, got {timestep_logit_normal}")
        self.encoder, self.conditioner, self.decoder = encoder, conditioner, decoder
        # K noisy copies (own noise and timestep) of each image share one encoder pass, so each encoder step sees
        # K samples of the teacher's signal (the paper: K = 1).
        self.noises_per_image = noises_per_image
        self.timesteps = timesteps
        self.timestep_logit_normal = None if timestep_logit_normal is None else tuple(timestep_logit_normal)
        if antithetic_noise and noises_per_image % 2:
            raise ValueError(f"antithetic noise pairs the copies of an image; noises_per_image={noises_per_image}")
        self.antithetic_noise = antithetic_noise

    def forward(self, batch: dict) -> torch.Tensor:
        if "seeds" in batch or "moments" in batch:
            return self._seeded_loss(batch)
        return self._loss(batch)

    def _seeded_loss(self, batch: dict) -> torch.Tensor:
        """The plain loss with each image's randomness drawn from its own seed, from cached moments when given."""
        if "composites" in batch:
            raise ValueError("per-image seeds and cached latents do not support the composition term")
        images = batch["images"]
        K, dec = self.noises_per_image, self.decoder
        if "seeds" not in batch:
            raise ValueError("a batch with cached `moments` needs per-image `seeds` to draw its latents")
        moments = batch.get("moments")
        if moments is None and dec.vae is not None:
            with torch.no_grad():
                moments = dec.encode_moments(to_batch(images, dec.cfg.image_size))  # (B, 2C, h, w)
        shape = (moments.shape[1] // 2, *moments.shape[2:]) if moments is not None else (3,) + (dec.cfg.image_size,) * 2
        T = dec.scheduler.config.num_train_timesteps
        vae_noise, noise, t = [], [], []
        for seed in batch["seeds"].tolist():
            g = torch.Generator().manual_seed(int(seed))  # drawn on the CPU: the same numbers on every device
            vae_noise.append(torch.randn(shape, generator=g))
            t.append(draw_timesteps(1, K, T, self.timesteps, g, logit_normal=self.timestep_logit_normal))
            if self.antithetic_noise:
                noise += list(antithetic_pairs(torch.stack([torch.randn(shape, generator=g) for _ in range(K // 2)])))
            else:
                noise += [torch.randn(shape, generator=g) for _ in range(K)]
        device = images.device
        if moments is not None:
            latents = dec.latents_from_moments(moments.to(device), torch.stack(vae_noise).to(device))
        else:
            latents = dec.encode_images(to_batch(images, dec.cfg.image_size))  # pixel space: deterministic
        c = self.conditioner(self.encoder(to_batch(images, dec.cfg.image_size)))  # (B, 77, D)
        latents = latents.repeat_interleave(K, dim=0)  # (B·K, ...); c stays (B, ...): K copies share it
        return dec.denoising_loss(latents, c, noise=torch.stack(noise).to(device), t=torch.cat(t).to(device))

    def _loss(self, batch: dict) -> torch.Tensor:
        """The composition term (optional, still images only): the spliced z of each source pair
        (`compose_embeddings`) must condition the denoising of the pair's composite image, which teaches the encoder
        to keep each image's content in its leading tokens. Every noisy sample, plain or composite, weighs the same.
        """
        images = batch["images"]
        targets, inputs = images, images
        if "composites" in batch:
            targets = torch.cat([images, batch["composites"]])
            inputs = torch.cat([images, batch["sources"].flatten(0, 1)])
        latents = self.decoder.encode_images(to_batch(targets, self.decoder.cfg.image_size))  # (B [+ P], C, h, w)
        # The encoder sees the very crop the decoder denoises (and inference feeds it, see `VLV.preprocess`).
        z = self.encoder(to_batch(inputs, self.decoder.cfg.image_size))  # (B [+ 2P], 77, D)
        B = images.shape[0]
        if "composites" in batch:
            z = torch.cat([z[:B], compose_embeddings(z[B:].unflatten(0, (-1, 2)))])  # (B + P, 77, D)
        c = self.conditioner(z)  # gradients reach the encoder through c
        K = self.noises_per_image
        latents = latents.repeat_interleave(K, dim=0)  # (·K, ...); the K copies share their c (`denoising_loss`)
        if self.timesteps == "uniform" and self.timestep_logit_normal is None and not self.antithetic_noise:
            return self.decoder.denoising_loss(latents, c)  # t drawn there: the paper's recipe, as before
        T = self.decoder.scheduler.config.num_train_timesteps
        t = draw_timesteps(
            latents.shape[0] // K, K, T, self.timesteps, device=latents.device, logit_normal=self.timestep_logit_normal
        )
        noise = None
        if self.antithetic_noise:
            half = torch.randn((latents.shape[0] // 2, *latents.shape[1:]), device=latents.device, dtype=latents.dtype)
            noise = antithetic_pairs(half)
        return self.decoder.denoising_loss(latents, c, t=t, noise=noise)


# The default bound of `Captioner`'s cache of frozen conditionings: 1 GiB holds 27,000 images' c of the shapes model
# (77 × 128 fp32) or 3,400 of the paper's (77 × 1,024 fp32).
CONDITIONING_CACHE_BYTES = 1 << 30


class Captioner(nn.Module):
    """Stage 2 (paper §3.2): next-token loss of the captions given the prefix ψ(CLIP(z))."""

    def __init__(
        self,
        encoder: VLVEncoder,
        conditioner: TextConditioner,
        caption_decoder: CaptionDecoder,
        image_size: int,
        *,
        denoising: Autoencoder | None = None,
        denoising_weight: float = 0.0,
        cache_bytes: int = CONDITIONING_CACHE_BYTES,
    ):
        """denoising, denoising_weight: add `denoising_weight` × the stage-1 loss of the same images (an
        `Autoencoder` over the same encoder), so that an encoder trained for captions stays one the teacher decodes.
        cache_bytes: the most memory the cached conditionings may take (see `conditions`; 0: no cache)."""
        super().__init__()
        self.encoder, self.conditioner, self.caption_decoder = encoder, conditioner, caption_decoder
        self.image_size = image_size  # the model's input crop (`VLV.preprocess`): the same pixels as inference
        self.denoising, self.denoising_weight = denoising, denoising_weight
        self.cache_bytes = cache_bytes
        self._cache: dict = {}  # image key → its c (77, d_clip), filled while encoder and conditioner are frozen
        self._cached_bytes = 0

    def conditions(self, batch: dict) -> torch.Tensor:
        """c (B, 77, d_clip) of the batch's images.

        While neither the encoder nor the conditioner trains (progressive phases 1 and 2), an image's c cannot change:
        when the batch names its images (`keys`, one hashable per image that no other image shares, e.g. its index
        in the data), each image's c is computed the first time it is drawn and reused after, on the device it was
        computed on, for as long as this composition lives or until `clear_cache`. Once the cache holds
        `cache_bytes`, images not in it are computed every time (those in it are still reused)."""
        keys = batch.get("keys")
        if keys is None or self.cache_bytes <= 0 or self._trains():
            return self._encode(batch["images"])
        new = {}  # each image not cached → where it first occurs in the batch
        for i, key in enumerate(keys):
            if key not in self._cache:
                new.setdefault(key, i)
        fresh = {}
        if new:
            with torch.no_grad():
                fresh = dict(zip(new, self._encode(batch["images"][list(new.values())])))
            for key, c in fresh.items():
                if self._cached_bytes + c.nbytes > self.cache_bytes:
                    break
                self._cache[key] = c.clone()  # its own storage: the batch's tensor is not kept alive
                self._cached_bytes += c.nbytes
        return torch.stack([self._cache[key] if key in self._cache else fresh[key] for key in keys])

    def _trains(self) -> bool:
        return any(p.requires_grad for m in (self.encoder, self.conditioner) for p in m.parameters())

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.conditioner(self.encoder(to_batch(images, self.image_size)))

    def clear_cache(self) -> None:
        """Forget the cached conditionings (`conditions` computes them again as images come). Training loops call it
        at each snapshot: a run resumed from there starts with an empty cache, and computing c in other batches can
        move its last bits, so the uninterrupted run must start afresh there too to stay bitwise the same."""
        self._cache.clear()
        self._cached_bytes = 0

    def forward(self, batch: dict) -> torch.Tensor:
        c = self.conditions(batch)  # (B, 77, d_clip)
        loss = self.caption_decoder.loss(c, batch["captions"])
        if self.denoising is not None and self.denoising_weight > 0:
            loss = loss + self.denoising_weight * self.denoising({"images": batch["images"]})
        return loss

"""The composed VLV auto-encoder and captioner, with its public inference API and save / load.

    image ──► VLVEncoder ──► z (77 × d) ──► frozen CLIP text encoder ──► c ──► frozen UNet  (reconstruct)
                                                                          └──► ψ ──► LLM     (caption)

A checkpoint directory holds `config.json` (a `VLVConfig`), `model.safetensors` with the weights training can
change (BART encoder/decoder, queries, φ, ψ, LLM) and the LLM tokenizer under `tokenizer/`. Frozen parts (the
Florence-2 vision side, the diffusion teacher) are referenced by hub id or path; a randomly initialised frozen
part is written next to the checkpoint (`florence/`, `teacher/`) and referenced by that relative path.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import AutoTokenizer

from vlv.captioner import CaptionDecoder
from vlv.config import VLVConfig, preset
from vlv.diffusion import DiffusionDecoder
from vlv.encoder import VLVEncoder, build_florence, resolve_prompt_ids
from vlv.images import ImageInput, to_batch
from vlv.loading import load_safetensors_strict, untie

CONFIG_NAME = "config.json"
# Frozen components that can be bundled inside a checkpoint: config section → folder name.
BUNDLED = {"encoder": "florence", "diffusion": "teacher"}
WEIGHTS_NAME = "model.safetensors"


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


class VLV(nn.Module):
    """A VLV model. Build one with `vlv.load(preset_name_or_directory)`."""

    def __init__(self, config: VLVConfig, *, pretrained: bool = True, _llm_from_source: bool = True, _tokenizer=None):
        """pretrained: load the `source` weights of each component (False: architecture only, random init)."""
        super().__init__()
        enc_cfg = config.encoder
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            florence = build_florence(enc_cfg, pretrained=pretrained)
            # An architecture-only build (e.g. on the meta device) needs no task prompt.
            prompt_ids = resolve_prompt_ids(enc_cfg) if pretrained or enc_cfg.prompt_token_ids else ()
            self.encoder = VLVEncoder(enc_cfg, florence, prompt_ids)
            self.diffusion = DiffusionDecoder(config.diffusion, pretrained=pretrained)
            clip_dim = self.diffusion.text_encoder.config.hidden_size
            if enc_cfg.z_dim != clip_dim:
                raise ValueError(f"encoder z_dim {enc_cfg.z_dim} must equal the text encoder width {clip_dim}")
            self.captioner = CaptionDecoder(
                config.captioner, clip_dim, pretrained=pretrained and _llm_from_source, tokenizer=_tokenizer
            )
        llm_arch = {k: v for k, v in self.captioner.llm.config.to_diff_dict().items() if k != "transformers_version"}
        self.config = dataclasses.replace(
            config,
            encoder=dataclasses.replace(enc_cfg, prompt_token_ids=tuple(prompt_ids) or enc_cfg.prompt_token_ids),
            captioner=dataclasses.replace(config.captioner, arch=llm_arch),
        )

    @property
    def device(self) -> torch.device:
        return self.encoder.queries.device

    # ----- training losses ---------------------------------------------------------------------------------------

    def autoencoder_loss(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        *,
        noises_per_image: int = 1,
        t_min: int = 0,
        compositions: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Stage-1 loss: the frozen teacher's denoising loss conditioned on CLIP(z). images: (B, 3, H, W) in [0, 1].

        noises_per_image: K noisy copies (own noise and timestep) of each image share one encoder pass, so each
        encoder step sees K samples of the teacher's signal. t_min: draw t from U{t_min..T-1}.
        compositions: optional (sources (P, 2, 3, H, W), composites (P, 3, H, W)), still images only: the spliced
        z of each source pair (`compose_embeddings`) must condition the denoising of the pair's composite image,
        which teaches the encoder to keep each image's content in its leading tokens. Every noisy sample, plain
        or composite, weighs the same in the mean.
        """
        size = self.config.diffusion.image_size
        targets, inputs = images, images
        if compositions is not None:
            sources, composites = compositions
            targets = torch.cat([images, composites])
            inputs = torch.cat([images, sources.flatten(0, 1)])
        latents = self.diffusion.encode_images(to_batch(targets, size), generator)
        z = self.encoder(inputs)
        B = images.shape[0]
        if compositions is not None:
            z = torch.cat([z[:B], compose_embeddings(z[B:].unflatten(0, (-1, 2)))])
        c = self.diffusion.condition(z)  # (B [+ P], 77, D); gradients reach the encoder through c
        K = noises_per_image
        latents, c = latents.repeat_interleave(K, dim=0), c.repeat_interleave(K, dim=0)  # (·K, ...)
        return self.diffusion.denoising_loss(latents, c, generator, t_min=t_min)

    def captioner_loss(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """Stage-2 loss: next-token loss of the captions given the prefix ψ(CLIP(z)). images: (B, 3, H, W)."""
        return self.captioner.loss(self.diffusion.condition(self.encoder(images)), captions)

    # ----- inference API -------------------------------------------------------------------------------------

    def preprocess(self, images: ImageInput | list) -> torch.Tensor:
        """PIL images, paths or a (B, 3, H, W) tensor in [0, 1] → (B, 3, S, S) on the model's device."""
        return to_batch(images, self.config.encoder.image_size).to(self.device)

    @torch.no_grad()
    def embed(self, images: ImageInput | list) -> torch.Tensor:
        """Caption embeddings z: (B, 77, D). Usable as diffusers `prompt_embeds` after `condition`."""
        self.eval()
        return self.encoder(self.preprocess(images))

    @torch.no_grad()
    def condition(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, 77, D) → c: (B, 77, D), the UNet's `encoder_hidden_states`."""
        return self.diffusion.condition(z)

    @torch.no_grad()
    def caption(self, images: ImageInput | list, **generate_kwargs) -> list[str]:
        """One caption per image; generation stops at EOS. kwargs: max_new_tokens, num_beams, repetition_penalty,
        no_repeat_ngram_size (defaults from the config)."""
        return self.captioner.generate(self.condition(self.embed(images)), **generate_kwargs)

    @torch.no_grad()
    def reconstruct(
        self,
        images: ImageInput | list,
        *,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int | None = 0,
        sampler: str | None = None,
    ) -> torch.Tensor:
        """Decode each image's z with the frozen diffusion model → (B, 3, S, S) in [0, 1]."""
        c = self.condition(self.embed(images))
        return self._sample(c, steps=steps, guidance=guidance, seed=seed, sampler=sampler)

    @torch.no_grad()
    def compose(
        self,
        images: ImageInput | list,
        *,
        splits: list[int] | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int | None = 0,
        sampler: str | None = None,
    ) -> torch.Tensor:
        """One image from several: splice their z (see `compose_embeddings`) and decode → (1, 3, S, S)."""
        z = compose_embeddings(self.embed(images), splits)
        return self._sample(self.condition(z), steps=steps, guidance=guidance, seed=seed, sampler=sampler)

    def _sample(self, c, *, steps, guidance, seed, sampler) -> torch.Tensor:
        generator = None
        if seed is not None:
            generator = torch.Generator(self.device).manual_seed(seed)
        return self.diffusion.sample(c, steps=steps, guidance=guidance, sampler=sampler, generator=generator)

    # ----- save / load -----------------------------------------------------------------------------------------

    def trained_modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "captioner": self.captioner}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write config.json + model.safetensors (+ tokenizer/, and any random-init frozen part) to `directory`."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        config = self.config
        for section, folder in BUNDLED.items():
            cfg = getattr(config, section)
            # Random-init frozen parts, and parts that were bundled in the checkpoint this model came from, travel
            # inside the checkpoint; hub ids and other paths stay references.
            if cfg.source is None or cfg.source == folder:
                getattr(self, section).save_pretrained(str(out / folder))
                config = dataclasses.replace(config, **{section: dataclasses.replace(cfg, source=folder)})
        self.captioner.tokenizer.save_pretrained(out / "tokenizer")
        state = {}
        for prefix, module in self.trained_modules().items():
            # contiguous copies: tied or shared tensors must not alias inside a safetensors file
            state.update(
                {f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in module.trained_state_dict().items()}
            )
        # Write to a temporary name first so an interrupted save never leaves a truncated checkpoint behind.
        tmp = out / (WEIGHTS_NAME + ".tmp")
        save_file(untie(state), str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out / WEIGHTS_NAME)
        (out / CONFIG_NAME).write_text(config.to_json() + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> VLV:
        """Load a directory written by `save_pretrained`; strict about every weight."""
        d = Path(directory)
        if not (d / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{d} is not a VLV checkpoint: no {CONFIG_NAME}")
        if not (d / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{d} is not a complete VLV checkpoint: no {WEIGHTS_NAME}")
        saved = VLVConfig.from_dict(json.loads((d / CONFIG_NAME).read_text()))
        # Build from the bundled folders of this checkpoint, but keep their relative names in the model's config.
        resolved = {
            s: dataclasses.replace(getattr(saved, s), source=_resolve(d, getattr(saved, s).source)) for s in BUNDLED
        }
        tokenizer = AutoTokenizer.from_pretrained(d / "tokenizer")
        # The LLM's weights are in model.safetensors: build it from the saved architecture, not from its source.
        model = cls(dataclasses.replace(saved, **resolved), _llm_from_source=False, _tokenizer=tokenizer)
        load_safetensors_strict(model.trained_modules(), str(d / WEIGHTS_NAME))
        model.config = dataclasses.replace(
            model.config,
            **{s: dataclasses.replace(getattr(model.config, s), source=getattr(saved, s).source) for s in BUNDLED},
        )
        return model


def _resolve(directory: Path, source: str | None) -> str | None:
    """A source that names a folder inside the checkpoint (e.g. `teacher`) is relative to it."""
    if source is not None and not os.path.isabs(source) and (directory / source).is_dir():
        return str(directory / source)
    return source


def load(
    name_or_directory: str | os.PathLike, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> VLV:
    """A VLV model from a preset name (`tiny`, `shapes`, `paper`) or a checkpoint directory.

    Presets load each component's pretrained `source` (random init where there is none); a directory loads the
    trained weights saved by `save_pretrained`. The model is returned in eval mode on `device`.
    """
    if os.path.isdir(name_or_directory):
        model = VLV.from_pretrained(name_or_directory)
    elif isinstance(name_or_directory, str) and "/" not in name_or_directory and os.sep not in name_or_directory:
        model = VLV(preset(name_or_directory))
    else:
        raise FileNotFoundError(f"no VLV checkpoint directory at {name_or_directory}")
    return model.to(device=device, dtype=dtype).eval()

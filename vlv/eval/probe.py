"""The stage-1 probe: how much of the true caption's denoising gain does z recover? (needs images and captions only)

The frozen teacher denoises held-out images on *fixed* noise and timesteps under three conditionings: the true
caption, the empty prompt, and CLIP(z) of the image. `recovered` = (loss_empty − loss_z) / (loss_empty −
loss_caption): 0 means z is worth no more than the empty prompt, 1 means it is worth the caption. The same measure
for the spliced z of two images (`compose_embeddings`) against the caption of their composite tells whether a
splice keeps both images' content.
"""

from __future__ import annotations

import torch

from vlv.compositions import compose_embeddings
from vlv.conditioning import TextConditioner
from vlv.diffusion import DiffusionDecoder
from vlv.model import VLV

NOISES = 8  # fixed noisy copies of each image
SEED = 1234  # of the fixed noise and timesteps


@torch.no_grad()
def fixed_noise_loss(
    decoder: DiffusionDecoder, images: torch.Tensor, c: torch.Tensor, *, noises: int = NOISES, seed: int = SEED
) -> float:
    """Denoising loss of images (B, 3, S, S) in [0, 1] at the teacher's size, conditioned on c (B, 77, D), on fixed
    noise and timesteps (`noises` per image), so that conditionings compare fairly."""
    latents = decoder.encode_images(images.to(decoder.device)).repeat_interleave(noises, 0)
    generator = torch.Generator(decoder.device).manual_seed(seed)
    return decoder.denoising_loss(latents, c.repeat_interleave(noises, 0), generator).item()


@torch.no_grad()
def prompt_losses(
    conditioner: TextConditioner, decoder: DiffusionDecoder, images: torch.Tensor, captions: list[str], **kw
) -> dict:
    """The reference losses: with the true captions and with the empty prompt (constant for a frozen teacher)."""
    caption, empty = conditioner.encode_prompts(captions), conditioner.encode_prompts([""] * len(captions))
    return {
        "loss_caption": fixed_noise_loss(decoder, images, caption, **kw),
        "loss_empty": fixed_noise_loss(decoder, images, empty, **kw),
    }


def _share(references: dict, loss: float) -> float:
    empty, caption = references["loss_empty"], references["loss_caption"]
    return (empty - loss) / (empty - caption)


@torch.no_grad()
def caption_gain_share(model: VLV, images: torch.Tensor, references: dict) -> dict:
    """Held-out loss with z vs the references (`prompt_losses` of the same images and captions), and the share of
    the caption's gain z recovers. images: (B, 3, S, S) in [0, 1] at the teacher's size."""
    images = images.to(model.device)
    loss = fixed_noise_loss(model.decoder, images, model.conditioner(model.encoder(images)))
    return {"loss_z": loss, **references, "recovered": _share(references, loss)}


@torch.no_grad()
def composition_gain_share(model: VLV, sources: torch.Tensor, composites: torch.Tensor, references: dict) -> dict:
    """Loss of composite images (P, 3, S, S) conditioned on the spliced z of their source pairs (P, 2, 3, S, S), vs
    the references of the composites' own captions; `composition_recovered` is the share of the gain the splice
    achieves."""
    z = model.encoder(sources.flatten(0, 1).to(model.device))  # (2P, 77, D)
    c = model.conditioner(compose_embeddings(z.unflatten(0, (-1, 2))))  # (P, 77, D)
    loss = fixed_noise_loss(model.decoder, composites, c)
    return {"loss_composed": loss, "composition_recovered": _share(references, loss)}

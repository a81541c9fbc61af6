"""CLIPScore (Hessel et al. 2021, "CLIPScore: A Reference-free Evaluation Metric for Image Captioning").

CLIP-S(image, caption) = w · max(cos(E_image, E_text), 0), averaged over the pairs, with w = 2.5: the paper's
rescaling of cosines, which rarely exceed 0.4, towards [0, 1]. Its reference code prefixes every caption with
"A photo depicts " and uses CLIP ViT-B/32. torchmetrics' `CLIPScore` reports 100 · max(cos, 0) on the bare caption:
pass scale=100, prefix="" for that variant. Always state the CLIP model, the scale and the prefix with a number.

The CLIP model is transformers' `CLIPModel` read from a local directory (e.g. a download of
openai/clip-vit-base-patch32). Pixels go through that directory's CLIP image processor (resize the short side to
224 with bicubic resampling, center-crop 224, CLIP's mean and std), on its PIL backend: the reference code resizes
with PIL, and the torchvision backend resizes differently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

from vlv.loading import load_hf_strict

HESSEL_SCALE = 2.5  # w of the paper
HESSEL_PREFIX = "A photo depicts "  # the caption prefix of the paper's reference code


def load_clip(directory: str | Path) -> tuple[CLIPModel, CLIPProcessor]:
    """The frozen CLIP model (fp32, strictly loaded, eval mode) and its processor from a local model directory."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"no CLIP model directory at {directory}: download one with "
            "`hf download openai/clip-vit-base-patch32 --local-dir DIR` and pass DIR"
        )
    model = load_hf_strict(CLIPModel, str(directory)).eval().requires_grad_(False)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil.from_pretrained(directory),
        tokenizer=AutoTokenizer.from_pretrained(directory),
    )
    return model, processor


def _pil_images(images: torch.Tensor | list[Image.Image]) -> list[Image.Image]:
    """A float tensor (N, 3, H, W) in [0, 1] becomes 8-bit RGB images, as if saved to PNG and read back."""
    if not isinstance(images, torch.Tensor):
        return [im.convert("RGB") for im in images]
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(f"images must be float (N, 3, H, W) in [0, 1], got {tuple(images.shape)} {images.dtype}")
    if images.min() < -1e-3 or images.max() > 1 + 1e-3:
        raise ValueError(f"images must be in [0, 1], got values in [{images.min():.3g}, {images.max():.3g}]")
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3)
    return [Image.fromarray(p) for p in pixels]


@torch.no_grad()
def clip_scores(
    model: CLIPModel,
    processor: CLIPProcessor,
    images: torch.Tensor | list[Image.Image],
    texts: list[str],
    *,
    scale: float = HESSEL_SCALE,
    prefix: str = HESSEL_PREFIX,
    batch_size: int = 64,
) -> np.ndarray:
    """Per-pair CLIPScores (N,) = scale · max(cos(image_i, prefix + texts[i]), 0).

    images: PIL images, or a float tensor (N, 3, H, W) in [0, 1]. Texts longer than CLIP's 77 tokens are truncated,
    as the reference code does.
    """
    images = _pil_images(images)
    if len(images) != len(texts):
        raise ValueError(f"{len(images)} images but {len(texts)} texts: they must pair up")
    if not texts:
        raise ValueError("no image-text pairs to score")
    max_length = model.config.text_config.max_position_embeddings
    device, dtype = model.device, model.dtype
    scores = []
    for start in range(0, len(texts), batch_size):
        pixels = processor.image_processor(images=images[start : start + batch_size], return_tensors="pt")
        tokens = processor.tokenizer(
            [prefix + t for t in texts[start : start + batch_size]],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        image_emb = model.get_image_features(pixel_values=pixels.pixel_values.to(device, dtype)).pooler_output  # (b, P)
        text_emb = model.get_text_features(**tokens).pooler_output  # (b, P)
        cos = F.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1)  # (b,)
        scores.append((scale * cos.clamp(min=0)).cpu().numpy())
    return np.concatenate(scores).astype(np.float64)


def clip_score(
    model: CLIPModel,
    processor: CLIPProcessor,
    images: torch.Tensor | list[Image.Image],
    texts: list[str],
    *,
    scale: float = HESSEL_SCALE,
    prefix: str = HESSEL_PREFIX,
    batch_size: int = 64,
) -> float:
    """The mean CLIPScore over the pairs (images[i], texts[i]); see `clip_scores`."""
    return float(clip_scores(model, processor, images, texts, scale=scale, prefix=prefix, batch_size=batch_size).mean())

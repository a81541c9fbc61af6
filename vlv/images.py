"""Image input handling: PIL images, file paths or tensors → one float batch (B, 3, S, S) in [0, 1].

Preprocessing follows the paper's training data path: resize the short side to S, then center-crop S × S.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

ImageInput = Image.Image | str | PathLike | torch.Tensor


def open_image(path: str | PathLike) -> Image.Image:
    """Open an image file as RGB, with an error that names the file when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def _resize_crop_pil(im: Image.Image, size: int) -> torch.Tensor:
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.convert("RGB").resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, S, S)


def _resize_crop_tensor(x: torch.Tensor, size: int) -> torch.Tensor:
    H, W = x.shape[-2:]
    scale = size / min(H, W)
    nh, nw = max(size, round(H * scale)), max(size, round(W * scale))
    if (nh, nw) != (H, W):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top : top + size, left : left + size].clamp(0, 1)


def to_batch(images: ImageInput | list, size: int) -> torch.Tensor:
    """images: a PIL image, a path, a list of either, or a float tensor (B, 3, H, W) in [0, 1] → (B, 3, S, S)."""
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                f"image tensor must be float (B, 3, H, W) in [0, 1], got {tuple(images.shape)} {images.dtype}"
            )
        return _resize_crop_tensor(images.float(), size)
    if not isinstance(images, (list, tuple)):
        images = [images]
    if not images:
        raise ValueError("no images given")
    out = []
    for im in images:
        if isinstance(im, (str, PathLike)):
            im = open_image(im)
        elif not isinstance(im, Image.Image):
            raise TypeError(f"expected a PIL image, a path or a tensor, got {type(im).__name__}")
        out.append(_resize_crop_pil(im, size))
    return torch.stack(out)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """images: (B, 3, H, W) in [0, 1] → PIL images."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]

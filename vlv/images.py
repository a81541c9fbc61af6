"""The one image transform of vlv, shared by training data and inference inputs.

`decode_image` turns file bytes into an RGB PIL image, or raises `UnreadableImage` with a short reason (the data
stream skips and reports such files); `preprocess` resizes the short side to S (bicubic) and center-crops S × S,
the paper's training data path. `to_batch` runs the same two functions on inference inputs, so that a model sees
at inference exactly the pixels it was trained on: `to_batch([path], S) == preprocess(decode_image(path), S) / 255`.
"""

from __future__ import annotations

import functools
import io
import warnings
from os import PathLike
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

# File suffixes read as images (folders, lists and shards; lower-cased, without the dot).
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"})


def is_image_name(name: str) -> bool:
    """Whether a file name has one of `IMAGE_EXTENSIONS` (any case)."""
    return name.rpartition(".")[2].lower() in IMAGE_EXTENSIONS


ImageInput = Image.Image | str | PathLike | torch.Tensor

# Larger images are rejected from their header, before any pixel is decoded (a decompression bomb declares a huge
# size in a few bytes). 8192² is far above any training resolution and below PIL's own limit
# (`Image.MAX_IMAGE_PIXELS`, ≈ 89 M), so PIL's check fires first only if a caller raises `max_pixels` above it.
MAX_PIXELS = 2**26
_SIXTEEN_BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


class UnreadableImage(ValueError):
    """An image file that cannot be used; `reason` says why in a few words."""

    def __init__(self, reason: str, name: str | None = None):
        super().__init__(f"cannot read image {name}: {reason}" if name else reason)
        self.reason = reason


def decode_image(data: bytes | str | PathLike, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """File bytes or a path → an RGB image (first frame, EXIF orientation applied, transparency on white).

    Raises `UnreadableImage` for an empty file, a file that is not an image, a truncated or corrupt one, or one
    declaring more than `max_pixels` pixels; `FileNotFoundError` for a path that does not exist.
    """
    name = None
    if isinstance(data, (str, PathLike)):
        name = str(data)
        if not Path(data).is_file():
            raise FileNotFoundError(f"image file not found: {name}")
        data = Path(data).read_bytes()
    if not data:
        raise UnreadableImage("empty file", name)
    # Decode with DecompressionBombWarning as an error, locally: PIL only warns between its limit and twice it.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise UnreadableImage("not an image", name) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise UnreadableImage(f"decompression bomb ({e})", name) from None
        except Exception as e:  # a corrupt header can make a PIL plugin raise almost anything
            raise UnreadableImage(_failure(e, "corrupt header"), name) from None
        w, h = im.size
        if w * h > max_pixels:
            raise UnreadableImage(f"too large: {w}×{h} pixels exceed max_pixels={max_pixels}", name)
        try:
            im.load()  # decode every pixel now: a truncated file fails here rather than in a later resize
            ImageOps.exif_transpose(im, in_place=True)
            return _to_rgb(im)
        except Image.DecompressionBombWarning as e:
            raise UnreadableImage(f"decompression bomb ({e})", name) from None
        except Exception as e:
            raise UnreadableImage(_failure(e, "corrupt"), name) from None


def _failure(e: Exception, what: str) -> str:
    """A short reason for a decoding exception: PIL says "truncated" in several spellings."""
    return "truncated" if "truncated" in str(e).lower() else f"{what} ({type(e).__name__}: {e})"


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode → RGB, with the conversions PIL's plain `convert("RGB")` gets wrong done by hand."""
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode in _SIXTEEN_BIT:
        # PIL converts 16-bit gray to 8 bits by clipping at 255 (almost everything turns white): scale instead.
        # Mode "I" is read as 16-bit data too: it is what 16-bit PNG / TIFF grayscale opens as in older PILs.
        arr = np.asarray(im).astype(np.float64).clip(0, 65535) * (255 / 65535)
        return Image.fromarray(arr.round().astype(np.uint8)).convert("RGB")
    if im.mode in _ALPHA or "transparency" in im.info:
        # Transparent pixels often hold black (or garbage) color: composite on white, as a viewer shows them.
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr


def _resize_crop(im: Image.Image, size: int) -> np.ndarray:
    """The center square of `im`, resized to size × size (bicubic, antialiased) → uint8 (S, S, 3).

    Resampling only the center square (PIL's `box`) equals resizing the short side to S and then cropping, but its
    cost stays bounded by S² however extreme the aspect ratio (a 100000 × 1 strip would otherwise grow to S·10⁵ × S).
    """
    w, h = im.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return np.asarray(_to_rgb(im).resize((size, size), Image.Resampling.BICUBIC, box=box), dtype=np.uint8)


def preprocess(im: Image.Image, size: int) -> torch.Tensor:
    """A PIL image → uint8 (3, S, S): resize the short side to S, center-crop (the training data transform)."""
    return torch.from_numpy(_resize_crop(im, size).copy()).permute(2, 0, 1)  # (3, S, S)


def open_image(path: str | PathLike) -> Image.Image:
    """Open an image file as RGB (see `decode_image`), with an error that names the file."""
    return decode_image(path)


def _resize_crop_tensor(x: torch.Tensor, size: int) -> torch.Tensor:
    H, W = x.shape[-2:]
    scale = size / min(H, W)
    nh, nw = max(size, round(H * scale)), max(size, round(W * scale))
    if (nh, nw) != (H, W):
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top : top + size, left : left + size].clamp(0, 1)


def bicubic_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """`F.interpolate(x, size, mode="bicubic", align_corners=False)` as two matrix products with the same weights
    (equal up to float rounding). x: (..., H, W) → (..., h, w). On CPU the bicubic kernel was the slowest single op
    of the encoder's forward (16 → 64 px: 13 ms for 32 images, 0.3 ms as matrix products)."""
    H, W = x.shape[-2:]
    if (H, W) == tuple(size):
        return x
    # Under torch.compile the weights are traced as the constants they are (the compiled graph keeps them).
    weights = _bicubic_weights.__wrapped__ if torch.compiler.is_compiling() else _bicubic_weights
    rows = weights(H, size[0], x.device, x.dtype)  # (h, H)
    cols = weights(W, size[1], x.device, x.dtype)  # (w, W)
    return rows @ x @ cols.T


@functools.lru_cache(maxsize=32)
def _bicubic_weights(n_in: int, n_out: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n_out, n_in): row i holds the bicubic weights of output i, read off by resizing the identity."""
    basis = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in, 1)  # one unit impulse per input position
    weights = F.interpolate(basis, size=(n_out, 1), mode="bicubic", align_corners=False)  # (n_in, 1, n_out, 1)
    return weights.view(n_in, n_out).T.contiguous().to(device=device, dtype=dtype)


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
        out.append(preprocess(im, size).float() / 255)  # the training transform, as floats in [0, 1]
    return torch.stack(out)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """images: (B, 3, H, W) in [0, 1] → PIL images."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]

"""What a run shows while it trains: a loss-curve PNG and a small grid of what the model makes of fixed images.

Drawn with PIL alone (no plotting dependency): a run writes OUT/loss.png and OUT/samples/step_NNNNNNN.png at every
save, beside the tensorboard event files.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from vlv.images import to_pil


def loss_curve_png(log: list[dict], path: Path, *, size: tuple[int, int] = (640, 360)) -> None:
    """The logged loss against the step (log-scale loss axis; phases of a run one after another)."""
    points = [(i, e["loss"]) for i, e in enumerate(log) if math.isfinite(e.get("loss", float("nan"))) and e["loss"] > 0]
    W, H = size
    im = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(im)
    left, right, top, bottom = 60, W - 20, 20, H - 40
    draw.rectangle((left, top, right, bottom), outline="black")
    last = log[-1]["step"] if log else 0
    draw.text((left, H - 30), f"log entries 0 … {len(log) - 1} (last step {last})", fill="black")
    if len(points) >= 2:
        lo, hi = math.log10(min(v for _, v in points)), math.log10(max(v for _, v in points))
        hi = hi if hi > lo else lo + 1e-6
        n = max(i for i, _ in points) or 1

        def xy(i: int, v: float) -> tuple[float, float]:
            return left + (right - left) * i / n, bottom - (bottom - top) * (math.log10(v) - lo) / (hi - lo)

        draw.line([xy(i, v) for i, v in points], fill=(31, 119, 180), width=2)
        draw.text((4, top), f"{10**hi:.3g}", fill="black")
        draw.text((4, bottom - 10), f"{10**lo:.3g}", fill="black")
    draw.text((left + 4, top + 4), "loss", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def image_grid(rows: list[torch.Tensor], path: Path, *, cell: int = 128, captions: list[str] | None = None) -> None:
    """rows: tensors (N, 3, H, W) in [0, 1] drawn as rows of N cells; captions: one line under each column."""
    n = rows[0].shape[0]
    text_h = 84 if captions else 0  # six lines of text under each image
    im = Image.new("RGB", (n * cell, len(rows) * cell + text_h), "white")
    for r, row in enumerate(rows):
        for c, tile in enumerate(to_pil(row)):
            im.paste(tile.resize((cell, cell), Image.Resampling.NEAREST), (c * cell, r * cell))
    if captions:
        draw = ImageDraw.Draw(im)
        for c, text in enumerate(captions):
            lines = [text[i : i + cell // 7] for i in range(0, len(text), cell // 7)] or [""]
            draw.multiline_text((c * cell + 2, len(rows) * cell + 2), "\n".join(lines[:6]), fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)

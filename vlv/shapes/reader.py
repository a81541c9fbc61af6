"""Reading and scoring shapes scenes: an attribute reader trained on ground-truth renders, and the scores.

The reader is a small CNN with one head per quadrant (occupied 2 + size 2 + color 4 + shape 3 logits). Trained on
renders of training-split scenes with mild gain/offset/noise augmentation, it reads teacher samples and
reconstructions; its penultimate features give the "shapes-FID". Scores compare per-quadrant readings:
{position: (size, color, shape) or None}.

The reader is a measuring instrument, fixed like the teacher: `vlv shapes train-reader` trains it and the demo's
(800 steps, seed 0) is committed under `assets/shapes_reader` (`save_reader` / `load_reader`), so that every
evaluation reads with the same one and none pays for training it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import trange

from vlv.checkpoint import WEIGHTS_NAME, read_tensors, write_json, write_weights
from vlv.config import derive_seed
from vlv.loading import check_state_dict
from vlv.shapes.world import COLORS, INVALID, POSITIONS, SHAPES, SIZES, Scene, ShapeObject, render_batch, sample_scenes

Reading = dict[str, ShapeObject | None]  # quadrant → object, None when empty
HEADS = (("occupied", 2), ("size", len(SIZES)), ("color", len(COLORS)), ("shape", len(SHAPES)))
PER_QUADRANT = sum(n for _, n in HEADS)


class AttributeReader(nn.Module):
    def __init__(self, image_size: int = 16, width: int = 64, features: int = 256):
        super().__init__()
        self.arch = {"image_size": image_size, "width": width, "features": features}
        self.body = nn.Sequential(
            nn.Conv2d(3, width // 2, 3, padding=1), nn.GELU(),
            nn.Conv2d(width // 2, width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(width * (image_size // 4) ** 2, features), nn.GELU(),
        )  # fmt: skip
        self.head = nn.Linear(features, len(POSITIONS) * PER_QUADRANT)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, S, S) in [0, 1] → penultimate features (B, features), used for the Fréchet distance."""
        return self.body(images * 2 - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """→ logits (B, 4 quadrants, 11)."""
        return self.head(self.features(images)).view(len(images), len(POSITIONS), PER_QUADRANT)

    @torch.no_grad()
    def read(self, images: torch.Tensor, batch_size: int = 512) -> list[Reading]:
        self.eval()
        logits = torch.cat([self(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
        out = []
        for row in logits:
            reading = {}
            for q, pos in enumerate(POSITIONS):
                occupied, size, color, shape = row[q].split([n for _, n in HEADS])
                reading[pos] = (
                    ShapeObject(pos, SIZES[size.argmax()], COLORS[color.argmax()], SHAPES[shape.argmax()])
                    if occupied.argmax() == 1
                    else None
                )
            out.append(reading)
        return out


def _targets(scenes: list[Scene]) -> torch.Tensor:
    """(B, 4, 4) class indices: occupied, size, color, shape per quadrant; -100 where the quadrant is empty."""
    t = torch.full((len(scenes), len(POSITIONS), 4), -100, dtype=torch.long)
    for i, s in enumerate(scenes):
        for q, pos in enumerate(POSITIONS):
            o = s.by_position()[pos]
            t[i, q, 0] = int(o is not None)
            if o is not None:
                t[i, q, 1:] = torch.tensor([SIZES.index(o.size), COLORS.index(o.color), SHAPES.index(o.shape)])
    return t


def train_reader(image_size: int = 16, steps: int = 1500, batch_size: int = 128, seed: int = 0) -> AttributeReader:
    """Train the reader on augmented renders of training-split scenes (about a minute on 2 CPU cores)."""
    torch.manual_seed(seed)
    reader = AttributeReader(image_size)
    opt = torch.optim.AdamW(reader.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    reader.train()
    for step in trange(steps, desc="attribute reader", leave=False):
        scenes = sample_scenes(batch_size, seed=derive_seed(seed, f"reader/{step}"), split="train")
        x = torch.from_numpy(render_batch(scenes, image_size))
        # Mild photometric augmentation so that imperfect (generated) images are still read reliably.
        gain = 1 + 0.2 * (torch.rand(len(x), 1, 1, 1, generator=g) - 0.5) * 2
        offset = 0.05 * (torch.rand(len(x), 1, 1, 1, generator=g) - 0.5) * 2
        x = (x * gain + offset + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1)
        logits = reader(x)
        t = _targets(scenes)
        loss = 0
        for k, (lo, n) in enumerate(zip(np.cumsum([0] + [n for _, n in HEADS[:-1]]), [n for _, n in HEADS])):
            loss = loss + F.cross_entropy(
                logits[..., lo : lo + n].reshape(-1, n), t[..., k].reshape(-1), ignore_index=-100
            )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    reader.training_record = {"steps": steps, "batch_size": batch_size, "seed": seed}
    return reader.eval()


def save_reader(reader: AttributeReader, out: str | Path) -> None:
    """A reader as a folder: config.json (its sizes and how it was trained) and model.safetensors."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_weights(out, reader.state_dict())
    write_json(out / "config.json", {**reader.arch, "training": getattr(reader, "training_record", None)})


def load_reader(path: str | Path) -> AttributeReader:
    """A reader saved by `save_reader`, in eval mode; every missing, extra or mis-shaped weight is an error."""
    path = Path(path)
    if not (path / "config.json").is_file() or not (path / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{path} is not an attribute reader folder (config.json + {WEIGHTS_NAME})")
    config = json.loads((path / "config.json").read_text())
    reader = AttributeReader(**{k: config[k] for k in ("image_size", "width", "features")})
    state = read_tensors(path, "")
    check_state_dict(reader.state_dict(), state, f"the attribute reader at {path}")
    reader.load_state_dict(state)
    reader.training_record = config.get("training")
    return reader.eval()


def reading_of(scene: Scene | str) -> Reading | None:
    """A ground-truth scene (or a parsed caption) as a reading; None for an invalid caption."""
    return None if scene == INVALID else scene.by_position()


def score(predicted: list[Reading | None], truth: list[Reading]) -> dict[str, float]:
    """Per-attribute accuracy and exact-scene accuracy of readings against reference readings.

    position: quadrant occupancy agreement over all 4 quadrants; size/color/shape: over the reference's objects
    (wrong when the object is missing); attribute_accuracy: the mean of those four; exact: every quadrant equal.
    None (an invalid caption) counts as wrong on everything.
    """
    if len(predicted) != len(truth):
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} references")
    pos_hits = pos_total = 0
    hits = {"size": 0, "color": 0, "shape": 0}
    objects = exact = 0
    for pred, ref in zip(predicted, truth):
        for p in POSITIONS:
            pos_total += 1
            pos_hits += pred is not None and (pred[p] is None) == (ref[p] is None)
            if ref[p] is not None:
                objects += 1
                for attr in hits:
                    hits[attr] += (
                        pred is not None and pred[p] is not None and getattr(pred[p], attr) == getattr(ref[p], attr)
                    )
        exact += pred is not None and pred == ref
    out = {"position": pos_hits / pos_total, **{k: v / max(1, objects) for k, v in hits.items()}}
    out["attribute_accuracy"] = sum(out[k] for k in ("position", "size", "color", "shape")) / 4
    out["exact"] = exact / len(truth)
    return out

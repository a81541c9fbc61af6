"""The shapes world: seeded procedural scenes with an exact caption grammar and a parser.

A scene holds 1–2 objects in distinct quadrants. Each object has a size (small, large), a color (red, green, blue,
yellow), a shape (circle, square, triangle) and a position (one quadrant). Its canonical caption is

    a {size} {color} {shape} at the {position}

per object, joined by " and " in quadrant order top left, top right, bottom left, bottom right. Images are drawn
4× super-sampled and box-downsampled (without anti-aliasing small circles and squares are identical at 16 px).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

SIZES = ("small", "large")
COLORS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")  # also the caption order
INVALID = "invalid"

RGB = {"red": (230, 40, 40), "green": (40, 200, 70), "blue": (50, 90, 240), "yellow": (235, 215, 40)}
BACKGROUND = (0, 0, 0)
# Half-extent of an object as a fraction of its quadrant's side.
HALF_EXTENT = {"small": 0.32, "large": 0.46}
SUPERSAMPLE = 4
HELD_OUT_PER_MILLE = 150  # ≈ 15% of the distinct scenes (≈ 530 of 3,552) never appear in training


@dataclass(frozen=True, order=True)
class ShapeObject:
    position: str
    size: str
    color: str
    shape: str

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape} at the {self.position}"


@dataclass(frozen=True)
class Scene:
    """Objects sorted in caption order; at most one per quadrant."""

    objects: tuple[ShapeObject, ...]

    def __post_init__(self):
        positions = [o.position for o in self.objects]
        if not 1 <= len(positions) <= 2 or len(set(positions)) != len(positions):
            raise ValueError(f"a scene holds 1–2 objects in distinct quadrants, got positions {positions}")
        for o in self.objects:
            if o.position not in POSITIONS or o.size not in SIZES or o.color not in COLORS or o.shape not in SHAPES:
                raise ValueError(f"unknown attribute in {o}")
        ordered = tuple(sorted(self.objects, key=lambda o: POSITIONS.index(o.position)))
        object.__setattr__(self, "objects", ordered)

    @property
    def caption(self) -> str:
        return " and ".join(o.phrase for o in self.objects)

    def to_dict(self) -> dict:
        return {"objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(tuple(ShapeObject(**o) for o in d["objects"]))

    def by_position(self) -> dict[str, ShapeObject | None]:
        """Quadrant → object (or None when empty), for per-attribute scoring."""
        found = {o.position: o for o in self.objects}
        return {p: found.get(p) for p in POSITIONS}

    @property
    def held_out(self) -> bool:
        """Whether this scene belongs to the held-out split (a fixed function of its caption)."""
        digest = hashlib.sha256(self.caption.encode()).digest()
        return int.from_bytes(digest[:4], "big") % 1000 < HELD_OUT_PER_MILLE


_PHRASE = re.compile(rf"a ({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) at the ({'|'.join(POSITIONS)})")


def parse_caption(text: str) -> Scene | str:
    """Caption → `Scene`, or the string "invalid" for anything outside the grammar (never raises).

    Objects may come in any order; two objects in one quadrant, or more than two objects, are invalid.
    """
    if not isinstance(text, str):
        return INVALID
    phrases = " ".join(text.strip().split()).split(" and ")
    objects = []
    for phrase in phrases:
        m = _PHRASE.fullmatch(phrase)
        if m is None:
            return INVALID
        size, color, shape, position = m.groups()
        objects.append(ShapeObject(position=position, size=size, color=color, shape=shape))
    try:
        return Scene(tuple(objects))
    except ValueError:
        return INVALID


def all_scenes() -> list[Scene]:
    """Every distinct scene of the world (3,552), in a fixed order."""
    looks = [(s, c, h) for s in SIZES for c in COLORS for h in SHAPES]
    scenes = [Scene((ShapeObject(p, *look),)) for p in POSITIONS for look in looks]
    for i, p in enumerate(POSITIONS):
        for q in POSITIONS[i + 1 :]:
            scenes += [Scene((ShapeObject(p, *a), ShapeObject(q, *b))) for a in looks for b in looks]
    return scenes


def sample_scenes(n: int, seed: int, split: str = "train") -> list[Scene]:
    """n scenes drawn uniformly (half one-object, half two-object on average) from `split`.

    split: "train" (never a held-out scene), "heldout" (only held-out scenes) or "all".
    """
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"unknown split '{split}'; choose train, heldout or all")
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        k = rng.choice((1, 2))
        positions = rng.sample(POSITIONS, k)
        scene = Scene(
            tuple(ShapeObject(p, rng.choice(SIZES), rng.choice(COLORS), rng.choice(SHAPES)) for p in positions)
        )
        if split == "all" or scene.held_out == (split == "heldout"):
            out.append(scene)
    return out


def sample_compositions(n: int, seed: int, split: str = "train") -> list[tuple[Scene, Scene, Scene]]:
    """n triples (a, b, a ∪ b) of one-object scenes in distinct quadrants and their union, all three in `split`."""
    in_split = lambda s: split == "all" or s.held_out == (split == "heldout")  # noqa: E731
    singles = [s for s in all_scenes() if len(s.objects) == 1 and in_split(s)]
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        a, b = rng.sample(singles, 2)
        if a.objects[0].position == b.objects[0].position:
            continue
        union = Scene(a.objects + b.objects)
        if in_split(union):
            out.append((a, b, union))
    return out


def render(scene: Scene, size: int = 16) -> Image.Image:
    """Draw `scene` as a size × size RGB image on the fixed background."""
    S = size * SUPERSAMPLE
    im = Image.new("RGB", (S, S), BACKGROUND)
    draw = ImageDraw.Draw(im)
    q = S / 2  # quadrant side
    for o in scene.objects:
        row, col = POSITIONS.index(o.position) // 2, POSITIONS.index(o.position) % 2
        cx, cy = (col + 0.5) * q, (row + 0.5) * q
        r = HALF_EXTENT[o.size] * q
        box = (cx - r, cy - r, cx + r, cy + r)
        if o.shape == "circle":
            draw.ellipse(box, fill=RGB[o.color])
        elif o.shape == "square":
            draw.rectangle(box, fill=RGB[o.color])
        else:  # an upright triangle filling the box's width
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=RGB[o.color])
    return im.resize((size, size), Image.Resampling.BOX)


def render_batch(scenes: list[Scene], size: int = 16) -> np.ndarray:
    """(N, 3, size, size) float32 in [0, 1]."""
    arr = np.stack([np.asarray(render(s, size), dtype=np.float32) for s in scenes]) / 255.0
    return arr.transpose(0, 3, 1, 2)


def write_scenes(out: Path, n: int, seed: int, *, size: int = 16, split: str = "train") -> Path:
    """Render `n` seeded scenes to out/00000.png (+ its caption as 00000.txt, the sidecar layout `vlv train` reads)
    … and out/scenes.jsonl (image, caption, scene); returns the index.

    Images first, the index last (through a temporary name): scenes.jsonl never names a missing file."""
    out.mkdir(parents=True, exist_ok=True)
    scenes = sample_scenes(n, seed, split=split)
    width = max(5, len(str(n - 1)))
    records = []
    for i, scene in enumerate(tqdm(scenes, desc="rendering", disable=n < 1000)):
        name = f"{i:0{width}d}.png"
        render(scene, size).save(out / name)
        (out / name).with_suffix(".txt").write_text(scene.caption + "\n")
        records.append(json.dumps({"image": name, "caption": scene.caption, "scene": scene.to_dict()}))
    tmp = out / "scenes.jsonl.tmp"
    tmp.write_text("\n".join(records) + "\n")
    tmp.replace(out / "scenes.jsonl")
    return out / "scenes.jsonl"

"""Batched inference over image files: caption, reconstruct, compose and embed, as the `vlv` commands run them.

Inputs are files, folders (searched recursively for `IMAGE_EXTENSIONS`) or list files (`.txt` / `.lst`, one path a
line, relative paths relative to the list file), expanded in the order given by `list_inputs`. Every command decodes
each image on its own first (`vlv.images.decode_image`), so one unreadable, truncated or non-image file is reported
by name while the good images of its batch still reach the model.

Captions are written as JSON lines, one object per image — `{"image": path, "caption": text}` or
`{"image": path, "error": reason}` — and the file is the run's state:

- a rerun skips every image the file already holds, captioned or failed (captioning is deterministic: a second try
  gives the same answer), so it only does the work a killed run left; records match inputs by absolute path;
- each batch's lines go out in one write, flushed and fsynced, so a killed run loses at most the batch in flight; a
  trailing partial line (killed inside that write) is cut off before appending;
- under an `accelerate.Accelerator` with several processes, each rank captions every world-th image not yet done
  and appends to OUT.rank{r}.part (rank 0 to OUT itself); after a barrier rank 0 appends the part files' records to
  OUT and deletes them. A rerun counts the records of part files left by a killed run as done, and merges them.

Reconstructions (one PNG per input plus a contact sheet), compositions and embeddings are written once at the end
of their run; they are not resumable.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TextIO

import torch
from PIL import Image
from safetensors.torch import save_file
from tqdm import tqdm

from vlv.images import IMAGE_EXTENSIONS, UnreadableImage, decode_image, is_image_name, preprocess, to_pil
from vlv.model import VLV

LIST_SUFFIXES = (".txt", ".lst")  # an input with one of these suffixes lists image paths, one a line
SHEET_NAME = "contact_sheet.png"
SHEET_ROWS = 64  # the contact sheet shows the first images only: a sheet of 10,000 rows is no quick look
SHEET_CELL = 128  # smaller images are upscaled (nearest, whole factors) to at least this side on the sheet
SHEET_GAP = 2  # white pixels between cells
# Progress bars appear after this many seconds, at their first update: a short run prints none, and an error raised
# while the model is still being built (an unreadable source) stays the only line on stderr.
PROGRESS_DELAY = 1.0


# ----- inputs -----------------------------------------------------------------------------------------------------


def list_inputs(inputs: Sequence[str | PathLike]) -> list[str]:
    """Files, folders and list files → image paths, in the order given (folders sorted), each once.

    A folder contributes its files with an image extension, searched recursively; a list file (`.txt`, `.lst`) the
    paths on its non-blank lines, relative ones taken relative to the list file's folder. Any other path is an image
    file, kept even if it does not exist: reading it fails later, for that image only. The same file reached twice
    (a folder and a file inside it) is kept at its first place.
    """
    paths: list[str] = []
    for item in map(str, inputs):
        if os.path.isdir(item):
            found = sorted(p for p in Path(item).rglob("*") if is_image_name(p.name) and p.is_file())
            if not found:
                raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {item}")
            paths += [os.path.normpath(p) for p in found]
        elif item.lower().endswith(LIST_SUFFIXES):
            paths += _read_list(item)
        else:
            paths.append(os.path.normpath(item))
    seen, unique = set(), []
    for p in paths:
        if os.path.abspath(p) not in seen:
            seen.add(os.path.abspath(p))
            unique.append(p)
    return unique


def _read_list(path: str) -> list[str]:
    """The paths a list file names, relative ones joined to the list file's folder."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"list file not found: {path}")
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a list of image paths (not UTF-8 text)") from None
    entries = [line.strip() for line in lines if line.strip()]
    if not entries:
        raise ValueError(f"list file {path} names no images")
    folder = os.path.dirname(path)
    return [os.path.normpath(os.path.join(folder, e)) for e in entries]  # join keeps absolute entries as they are


def decode_images(paths: Sequence[str]) -> tuple[dict[str, Image.Image], dict[str, str]]:
    """Decode each file on its own → (path → RGB image, path → why it cannot be read); both in input order."""
    images, errors = {}, {}
    for path in paths:
        try:
            images[path] = decode_image(path)
        except UnreadableImage as e:
            errors[path] = e.reason
        except FileNotFoundError:
            errors[path] = "file not found"
        except OSError as e:  # a folder named like an image, no permission, an I/O error
            errors[path] = f"cannot read file ({type(e).__name__}: {e.strerror or e})"
    return images, errors


def output_names(paths: Sequence[str], *, reserved: Sequence[str] = ()) -> list[str]:
    """A PNG name per input, unique: its path relative to the inputs' common folder with `.png` for its suffix
    (`cats/a.jpg` → `cats/a.png`), or with `.png` after its suffix where two inputs would share a name or a name is
    `reserved` (`a.jpg`, `a.png` → `a.jpg.png`, `a.png.png`)."""
    if not paths:
        return []
    absolute = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    relative = [Path(os.path.relpath(p, root)).as_posix() for p in absolute]
    plain = [r.rpartition(".")[0] + ".png" if "." in Path(r).name else r + ".png" for r in relative]
    taken = Counter(plain) + Counter(reserved)
    names = [p if taken[p] == 1 and p not in reserved else r + ".png" for p, r in zip(plain, relative)]
    clashes = sorted(n for n, k in Counter([*names, *reserved]).items() if k > 1)
    if clashes:  # only inputs named like another's output (`a.png.png` beside `a.png` and `a.jpg`) get here
        raise ValueError(f"inputs would overwrite each other's output {clashes[0]}; rename one of them")
    return names


def batches(items: Sequence, size: int):
    """Consecutive slices of `size` items (the last may be shorter)."""
    if size < 1:
        raise ValueError(f"batch size must be a positive integer, got {size}")
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ----- caption records: an append-only JSON-lines file that survives being killed -----------------------------------


def read_records(path: str | PathLike) -> list[dict]:
    """The records of a JSON-lines file, without a trailing partial line (a write cut short by a kill); [] when the
    file does not exist. A complete line that is not a record is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    records = []
    for number, line in enumerate(complete.decode("utf-8", errors="replace").splitlines(), start=1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            raise ValueError(f"{path}, line {number}: not a caption record ({line[:80]!r}); fix or remove that line")
        records.append(record)
    return records


def cut_partial_line(path: str | PathLike) -> bool:
    """Cut a trailing partial line (no newline yet) off `path`; True when there was one."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end == len(data):
            return False
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
    return True


def write_records(stream: TextIO, records: Sequence[dict]) -> None:
    """Append records as JSON lines in one write, pushed to disk (fsync) before returning: once a batch is reported
    written, a kill or power loss cannot take it back, nor leave half of it."""
    stream.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    stream.flush()
    try:
        os.fsync(stream.fileno())
    except (OSError, ValueError):  # a pipe or terminal (stdout) has nothing to sync
        pass


def part_file(out: Path, rank: int) -> Path:
    """Where rank `rank` (> 0) of a multi-process run appends its records before rank 0 merges them into `out`."""
    return out.with_name(f"{out.name}.rank{rank}.part")


def part_files(out: Path) -> list[Path]:
    """The part files beside `out`: this run's and any left by a killed run (of whatever world size)."""
    return sorted(out.parent.glob(f"{out.name}.rank*.part"))


@dataclass(frozen=True)
class CaptionSummary:
    """A caption run's inputs: how many the output held before it started, and how many it holds as captioned and
    as failed (an error record), whichever run wrote them; over all processes."""

    inputs: int
    done_before: int
    captioned: int
    failed: int


def caption_files(
    model: VLV,
    paths: Sequence[str],
    out: str | PathLike | None,
    *,
    batch_size: int = 16,
    options: dict | None = None,
    accelerator=None,
    progress: bool = True,
) -> CaptionSummary:
    """Caption image files into the JSON-lines file `out` (see the module docstring), resuming what it holds.

    out: None writes the records to stdout instead (one process, nothing to resume).
    options: `GenerateOptions` fields for `model.caption` (None or absent: the model's default).
    accelerator: an `accelerate.Accelerator` whose processes share the work; None runs in this process as is.
    """
    options = options or {}
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    if out is None:
        if world > 1:
            raise ValueError("several processes need --out FILE to merge their captions into")
        todo, done_before, sink = list(paths), 0, sys.stdout
    else:
        out = Path(out)
        if out.is_dir():
            raise ValueError(f"--out {out} is a folder; caption records go to a file (e.g. captions.jsonl)")
        out.parent.mkdir(parents=True, exist_ok=True)
        done = {os.path.abspath(r["image"]) for f in [out, *part_files(out)] for r in read_records(f)}
        todo = [p for p in paths if os.path.abspath(p) not in done]
        done_before = len(paths) - len(todo)
        if accelerator is not None:
            accelerator.wait_for_everyone()  # every rank has read the files before any rank appends to them
        target = out if rank == 0 else part_file(out, rank)
        cut_partial_line(target)
    mine = todo[rank::world]
    captioned = failed = 0  # by this process: the totals when it writes to stdout
    with (
        open(target, "a", encoding="utf-8") if out is not None else contextlib.nullcontext(sink) as stream,
        tqdm(
            total=len(mine), desc="caption", unit="img", delay=PROGRESS_DELAY, disable=not progress or rank != 0
        ) as bar,
    ):
        for batch in batches(mine, batch_size):
            images, errors = decode_images(batch)
            texts = dict(zip(images, model.caption(list(images.values()), **options))) if images else {}
            records = [
                {"image": p, "caption": texts[p]} if p in texts else {"image": p, "error": errors[p]} for p in batch
            ]
            write_records(stream, records)
            captioned, failed = captioned + len(texts), failed + len(errors)
            bar.update(len(batch))
    if out is None:
        return CaptionSummary(len(paths), 0, captioned, failed)
    if accelerator is not None:
        accelerator.wait_for_everyone()  # every rank's part file is complete
    if rank == 0:
        merge_parts(out)
    if accelerator is not None:
        accelerator.wait_for_everyone()  # so every rank reads the merged file and reports the same status
    final = {os.path.abspath(r["image"]): r for r in read_records(out)}
    kinds = Counter("error" if "error" in final[os.path.abspath(p)] else "caption" for p in paths)
    return CaptionSummary(len(paths), done_before, kinds["caption"], kinds["error"])


def merge_parts(out: Path) -> int:
    """Append the records of the part files beside `out` that it does not hold yet, then delete the part files.

    Killed at any point, a rerun finds no record twice: records already merged are skipped, and the part files go
    only after the merged lines are on disk. Returns the number of records merged."""
    parts = part_files(out)
    if not parts:
        return 0
    cut_partial_line(out)
    have = {os.path.abspath(r["image"]) for r in read_records(out)}
    new = []
    for part in parts:
        for record in read_records(part):
            if os.path.abspath(record["image"]) not in have:
                have.add(os.path.abspath(record["image"]))
                new.append(record)
    with open(out, "a", encoding="utf-8") as stream:
        write_records(stream, new)
    for part in parts:
        part.unlink()
    return len(new)


# ----- reconstruct, compose, embed -----------------------------------------------------------------------------------


def reconstruct_files(
    model: VLV,
    paths: Sequence[str],
    out_dir: str | PathLike,
    *,
    batch_size: int = 16,
    seed: int | None = 0,
    options: dict | None = None,
    progress: bool = True,
) -> dict[str, str]:
    """Reconstruct each image into `out_dir` (names from `output_names`) and draw `SHEET_NAME` there: a row per
    image (the first `SHEET_ROWS`), the crop the model saw beside its reconstruction. Returns path → why it could
    not be read, for the inputs skipped.

    Each batch's noise comes from `seed` (`model.reconstruct(batch, seed=seed)`), so an image's reconstruction
    depends on its place in its batch: the same inputs, batch size and seed give the same PNGs.
    """
    out_dir = Path(out_dir)
    names = dict(zip(paths, output_names(paths, reserved=[SHEET_NAME])))
    failed: dict[str, str] = {}
    rows: list[tuple[Image.Image, Image.Image]] = []  # (the model's input crop, its reconstruction)
    size = model.config.teacher.image_size
    with tqdm(total=len(paths), desc="reconstruct", unit="img", delay=PROGRESS_DELAY, disable=not progress) as bar:
        for batch in batches(paths, batch_size):
            images, errors = decode_images(batch)
            failed.update(errors)
            if images:
                recons = to_pil(model.reconstruct(list(images.values()), seed=seed, **(options or {})))
                for (path, image), recon in zip(images.items(), recons):
                    target = out_dir / names[path]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    recon.save(target)
                    if len(rows) < SHEET_ROWS:
                        rows.append((Image.fromarray(preprocess(image, size).permute(1, 2, 0).numpy()), recon))
            bar.update(len(batch))
    if rows:
        contact_sheet(rows).save(out_dir / SHEET_NAME)
    return failed


def contact_sheet(rows: Sequence[tuple[Image.Image, Image.Image]]) -> Image.Image:
    """Pairs of images → one image, a pair per row, each cell upscaled (nearest) to at least `SHEET_CELL` pixels."""
    side = max(max(im.size) for pair in rows for im in pair)
    cell = side * max(1, math.ceil(SHEET_CELL / side))  # whole factors: nearest upscaling keeps pixels square
    sheet = Image.new("RGB", (2 * cell + SHEET_GAP, len(rows) * (cell + SHEET_GAP) - SHEET_GAP), "white")
    for i, pair in enumerate(rows):
        for j, im in enumerate(pair):
            corner = (j * (cell + SHEET_GAP), i * (cell + SHEET_GAP))
            sheet.paste(im.resize((cell, cell), Image.Resampling.NEAREST), corner)
    return sheet


def compose_files(
    model: VLV,
    paths: Sequence[str],
    out_file: str | PathLike,
    *,
    splits: list[int] | None = None,
    seed: int | None = 0,
    options: dict | None = None,
) -> Image.Image:
    """The composition of several images (`model.compose`: their z spliced, then decoded), saved to `out_file`.

    Every input must be readable: a composition missing one of its parts is not the one asked for."""
    if len(paths) < 2:
        raise ValueError(f"a composition needs at least two images, got {len(paths)}")
    images = [decode_image(p) for p in paths]  # raises naming the first unreadable input
    image = to_pil(model.compose(images, splits=splits, seed=seed, **(options or {})))[0]
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    image.save(out_file)
    return image


def embed_files(
    model: VLV,
    paths: Sequence[str],
    out_file: str | PathLike,
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, str]:
    """Write the caption embeddings of image files to a safetensors file; returns path → reason for the inputs
    skipped (nothing is written when no input can be read).

    Tensors: `z` (N, 77, D), the caption embeddings; `prompt_embeds` (N, 77, D) = `model.condition(z)`, the teacher
    UNet's conditioning; `negative_prompt_embeds` (1, 77, D), the teacher's empty prompt (the unconditional branch of
    guidance); all float32, whatever the model's dtype. Metadata (strings): `images`, the N paths as JSON; `skipped`,
    path → reason as JSON; `image_size`, the resolution the model reconstructs at. `prompt_embeds` and
    `negative_prompt_embeds` (expanded to N) are what a diffusers `StableDiffusionPipeline` of the same teacher takes
    in place of prompts (see the README).
    """
    zs, cs, kept, failed = [], [], [], {}
    with tqdm(total=len(paths), desc="embed", unit="img", delay=PROGRESS_DELAY, disable=not progress) as bar:
        for batch in batches(paths, batch_size):
            images, errors = decode_images(batch)
            failed.update(errors)
            if images:
                z = model.embed(list(images.values()))  # (b, 77, D)
                zs.append(z.float().cpu())
                cs.append(model.condition(z).float().cpu())
                kept += list(images)
            bar.update(len(batch))
    if not kept:
        return failed
    with torch.no_grad():
        negative = model.conditioner.encode_prompts([""]).float().cpu()  # (1, 77, D)
    tensors = {"z": torch.cat(zs), "prompt_embeds": torch.cat(cs), "negative_prompt_embeds": negative}
    metadata = {
        "images": json.dumps(kept, ensure_ascii=False),
        "skipped": json.dumps(failed, ensure_ascii=False),
        "image_size": str(model.config.teacher.image_size),
    }
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    partial = out_file.with_name(out_file.name + ".partial")  # renamed when complete: never a truncated file
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial), metadata=metadata)
    os.replace(partial, out_file)
    return failed

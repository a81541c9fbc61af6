"""Training data readers: one interface over image folders, Hugging Face parquet files and webdataset tar shards.

A `Source` is an ordered list of `Unit`s, the pieces that can be read independently (a chunk of a folder's files,
a parquet row group, a tar shard); iterating a unit yields `Record`s in stored order. Readers only read bytes:
splitting across ranks and workers, shuffling and decoding are the stream's job (`vlv.data.stream`).

The layouts are their writers': the `datasets` library's parquet files (an image column of `{"bytes", "path"}`
structs, the Image feature) and img2dataset's webdataset output (`00000.tar` holding `000000000.jpg`,
`000000000.txt`, `000000000.json` per sample), read as webdataset does: a stream, members grouped by the basename
up to its first dot.
"""

from __future__ import annotations

import glob
import posixpath
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from vlv.images import IMAGE_EXTENSIONS, is_image_name

FOLDER_CHUNK = 256  # files per folder unit: small enough that slots stay balanced, large enough to shuffle
FORMS = (
    "a folder of images (captions from NAME.txt sidecars), a .parquet file or a glob of them (Hugging Face layout), "
    "or webdataset .tar shards (one path, a glob, or a brace range such as DIR/{00000..00009}.tar)"
)


@dataclass(frozen=True)
class Record:
    """One stored sample: encoded image bytes (or already-preprocessed tensors), its caption, and a reason to skip
    it when the reader already knows it is unusable (`data` is then empty)."""

    key: str
    data: bytes | dict[str, torch.Tensor]
    caption: str | None
    skip: str | None = None


class Unit(Protocol):
    """A piece of a source that can be read on its own: iterating it yields its records in stored order."""

    def __iter__(self) -> Iterator[Record]: ...


@dataclass
class Source:
    """An ordered list of units; `kind` is "folder", "parquet" or "webdataset"."""

    spec: str
    kind: str
    units: list[Unit] = field(repr=False)

    def __iter__(self) -> Iterator[Record]:
        for unit in self.units:
            yield from unit


def open_source(spec: str | PathLike, *, image_column: str = "image", caption_column: str = "caption") -> Source:
    """A folder, parquet file(s) or webdataset shards → a `Source` (see the module docstring for the layouts).

    `spec` may hold a glob (`data/*.parquet`) or brace ranges (`shards/{00000..00009}.tar`, zero-padded like the
    first bound). Raises `FileNotFoundError` when nothing matches and `ValueError` for any other kind of path.
    """
    spec = str(spec)
    paths = _expand(spec)
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return Source(spec, "folder", _folder_units(Path(paths[0])))
    suffixes = {Path(p).suffix.lower() for p in paths}
    if suffixes == {".parquet"}:
        return Source(spec, "parquet", [u for p in paths for u in _parquet_units(p, image_column, caption_column)])
    if suffixes == {".tar"}:
        return Source(spec, "webdataset", [TarUnit(p) for p in paths])
    raise ValueError(f"cannot read {spec!r} as training data: expected {FORMS}")


def _expand(spec: str) -> list[str]:
    """Brace ranges, then globs → the existing paths, sorted within each glob."""
    patterns = _expand_braces(spec)
    if patterns == [spec] and not glob.has_magic(spec):
        if not Path(spec).exists():
            raise FileNotFoundError(f"training data not found: {spec}")
        return [spec]
    paths, missing = [], []
    for pattern in patterns:
        if glob.has_magic(pattern):
            paths += sorted(glob.glob(pattern))
        elif Path(pattern).exists():
            paths.append(pattern)
        else:
            missing.append(pattern)
    if not paths:
        raise FileNotFoundError(f"no files match {spec}")
    if missing:
        # img2dataset leaves gaps where a shard failed; taking the rest silently would hide lost data.
        raise FileNotFoundError(
            f"{len(missing)} of the {len(patterns)} files of {spec} are missing (first: {missing[0]}); "
            "pass a glob to read the ones that exist"
        )
    return paths


def _expand_braces(pattern: str) -> list[str]:
    """`a{08..10}b` → [`a08b`, `a09b`, `a10b`], as braceexpand (and so webdataset) reads shard lists."""
    m = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if m is None:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo) if lo.startswith("0") else 0  # "{00000..00009}" pads to five digits
    head, tail = pattern[: m.start()], _expand_braces(pattern[m.end() :])
    return [f"{head}{i:0{width}d}{t}" for i in range(int(lo), int(hi) + 1) for t in tail]


# --- folders ---


@dataclass(frozen=True)
class FolderUnit:
    """A chunk of a folder's image files; key = the path relative to the folder, without its extension."""

    root: str
    names: tuple[str, ...]  # posix paths relative to root

    def __iter__(self) -> Iterator[Record]:
        for name in self.names:
            path = Path(self.root, name)
            key = name.rpartition(".")[0]
            sidecar = path.with_suffix(".txt")
            try:
                data = path.read_bytes()
                caption = sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else None
            except (OSError, UnicodeDecodeError) as e:  # a file deleted or unreadable since the listing
                yield Record(key, b"", None, skip=f"cannot read file ({type(e).__name__}: {e})")
                continue
            yield Record(key, data, caption)


def _folder_units(root: Path) -> list[Unit]:
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if is_image_name(p.name) and p.is_file())
    if not names:
        raise FileNotFoundError(
            f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}; for parquet files or tar shards "
            "pass a glob such as DIR/*.parquet or DIR/*.tar"
        )
    return [FolderUnit(str(root), tuple(names[i : i + FOLDER_CHUNK])) for i in range(0, len(names), FOLDER_CHUNK)]


# --- parquet (Hugging Face datasets layout) ---


@dataclass(frozen=True)
class ParquetUnit:
    """One row group of a parquet file; key = f"{file stem}/{row index in the file}"."""

    path: str
    row_group: int
    first_row: int  # index in the file of the row group's first row
    image_column: str
    caption_column: str | None  # None when the file has no caption column

    def __iter__(self) -> Iterator[Record]:
        columns = [self.image_column] + ([self.caption_column] if self.caption_column else [])
        table = pq.ParquetFile(self.path).read_row_group(self.row_group, columns=columns)
        images = table.column(self.image_column).to_pylist()
        captions = table.column(self.caption_column).to_pylist() if self.caption_column else [None] * len(images)
        stem = Path(self.path).stem
        for i, (image, caption) in enumerate(zip(images, captions)):
            key = f"{stem}/{self.first_row + i}"
            data = image.get("bytes") if isinstance(image, dict) else image  # an Image struct or plain binary
            if data is None:
                where = f" (stored by path only: {image.get('path')})" if isinstance(image, dict) else ""
                yield Record(key, b"", caption, skip=f"no image bytes{where}")
            else:
                yield Record(key, data, caption)


def _parquet_units(path: str, image_column: str, caption_column: str) -> list[Unit]:
    pf = pq.ParquetFile(path)
    schema = pf.schema_arrow
    if image_column not in schema.names:
        raise ValueError(f"{path} has no image column {image_column!r} (columns: {', '.join(schema.names)})")
    kind = schema.field(image_column).type
    is_struct = pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0
    if not (is_struct or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        raise ValueError(f"{path}: column {image_column!r} is {kind}, expected image structs {{bytes, path}} or binary")
    if caption_column in schema.names:
        if not pa.types.is_string(schema.field(caption_column).type) and not pa.types.is_large_string(
            schema.field(caption_column).type
        ):
            raise ValueError(f"{path}: caption column {caption_column!r} is {schema.field(caption_column).type}")
    else:
        caption_column = None
    units, first = [], 0
    for g in range(pf.metadata.num_row_groups):
        units.append(ParquetUnit(path, g, first, image_column, caption_column))
        first += pf.metadata.row_group(g).num_rows
    return units


# --- webdataset tar shards (img2dataset layout) ---


@dataclass(frozen=True)
class TarUnit:
    """One tar shard, read as a stream; key = f"{shard stem}/{sample key}"."""

    path: str

    def __iter__(self) -> Iterator[Record]:
        stem = Path(self.path).name.removesuffix(".tar")
        key, members = None, []  # the sample being gathered: (extension, bytes) in stored order
        try:
            with tarfile.open(self.path, mode="r|") as tar:  # a stream: shards may sit on storage without seeking
                for member in tar:
                    if not member.isfile():
                        continue
                    folder, base = posixpath.split(member.name)
                    name, _, ext = base.partition(".")  # webdataset: the extension is all after the first dot
                    if posixpath.join(folder, name) != key:
                        if key is not None:
                            yield _tar_record(f"{stem}/{key}", members)
                        key, members = posixpath.join(folder, name), []
                    ext = ext.lower()
                    if ext in IMAGE_EXTENSIONS or ext == "txt":  # the .json metadata is not used
                        members.append((ext, tar.extractfile(member).read()))
        except (tarfile.TarError, OSError, EOFError) as e:
            # A shard cut short (an interrupted download): keep what was read, report the rest as one skip.
            if key is not None:
                yield _tar_record(f"{stem}/{key}", members)
            yield Record(f"{stem}/", b"", None, skip=f"shard unreadable from here on ({type(e).__name__}: {e})")
            return
        if key is not None:
            yield _tar_record(f"{stem}/{key}", members)


def _tar_record(key: str, members: list[tuple[str, bytes]]) -> Record:
    images = [data for ext, data in members if ext in IMAGE_EXTENSIONS]
    texts = [data for ext, data in members if ext == "txt"]
    try:
        caption = texts[0].decode("utf-8").strip() if texts else None
    except UnicodeDecodeError:
        return Record(key, b"", None, skip="caption is not utf-8")
    if not images:
        return Record(key, b"", caption, skip="no image in the sample")
    return Record(key, images[0], caption)

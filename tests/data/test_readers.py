"""Readers: the same samples stored as a folder, a Hugging Face parquet file and webdataset shards read alike."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlv.data import open_source
from vlv.images import decode_image

N = 12


def sample_images(n: int = N) -> list[tuple[bytes, str | None]]:
    """n tiny PNGs of different sizes and colors, with captions; sample 5 has none."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        arr = rng.integers(0, 256, (8 + i % 3, 8 + i % 4, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "PNG")
        out.append((buf.getvalue(), None if i == 5 else f"picture number {i}"))
    return out


def write_folder(root: Path, samples) -> Path:
    for i, (data, caption) in enumerate(samples):
        path = root / ("sub" if i % 2 else "") / f"{i:02d}.png"  # half of them one level down
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if caption is not None:
            path.with_suffix(".txt").write_text(caption + "\n")
    return root


def write_parquet(path: Path, samples, row_group_size: int = 5) -> Path:
    """The `datasets` library's layout: an Image column of {bytes, path} structs and a string caption column."""
    table = pa.table(
        {
            "image": [{"bytes": data, "path": f"{i}.png"} for i, (data, _) in enumerate(samples)],
            "caption": [caption for _, caption in samples],
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(root: Path, samples, n_shards: int) -> Path:
    """img2dataset's layout: {00000..}.tar, each holding 000000000.png, .txt, .json per sample."""
    root.mkdir(parents=True, exist_ok=True)
    for shard in range(n_shards):
        with tarfile.open(root / f"{shard:05d}.tar", "w") as tar:
            for j, i in enumerate(range(shard, len(samples), n_shards)):
                data, caption = samples[i]
                key = f"{shard:05d}{j:04d}"  # img2dataset: shard number, then the index in the shard
                add_member(tar, f"{key}.png", data)
                if caption is not None:
                    add_member(tar, f"{key}.txt", caption.encode())
                add_member(tar, f"{key}.json", json.dumps({"key": key, "status": "success"}).encode())
    return root


def contents(source) -> list[tuple[str, bytes]]:
    """(caption, decoded pixels) of every record, sorted: what must not depend on the storage form."""
    return sorted((r.caption or "", decode_image(r.data).tobytes()) for r in source)


def test_three_forms_yield_the_same_samples(tmp_path):
    samples = sample_images()
    folder = open_source(write_folder(tmp_path / "folder", samples))
    parquet = open_source(write_parquet(tmp_path / "train.parquet", samples))
    shards = open_source(f"{write_shards(tmp_path / 'wds', samples, 3)}/{{00000..00002}}.tar")
    assert (folder.kind, parquet.kind, shards.kind) == ("folder", "parquet", "webdataset")
    assert len(folder.units) == 1 and len(parquet.units) == 3 and len(shards.units) == 3  # 12 rows, groups of 5
    expected = sorted((c or "", decode_image(d).tobytes()) for d, c in samples)
    for source in (folder, parquet, shards):
        assert contents(source) == expected, source.kind
    assert [r.key for r in folder][:3] == ["00", "02", "04"]  # sorted by relative path: root files before sub/
    assert [r.key for r in parquet] == [f"train/{i}" for i in range(N)]
    assert [r.key for r in shards.units[1]] == [f"00001/00001000{j}" for j in range(4)]  # samples 1, 4, 7, 10
    assert [r.caption for r in parquet][4:7] == ["picture number 4", None, "picture number 6"]


def test_folders_are_read_in_chunks_and_match_extensions_case_insensitively(tmp_path):
    data, _ = sample_images(1)[0]
    for i in range(300):
        (tmp_path / f"{i:03d}.{'PNG' if i % 2 else 'png'}").write_bytes(data)
    (tmp_path / "notes.md").write_text("not an image")
    source = open_source(tmp_path)
    assert [len(u.names) for u in source.units] == [256, 44]
    assert sum(1 for _ in source) == 300 and all(r.caption is None for r in source)


def test_parquet_variants_globs_and_column_errors(tmp_path):
    samples = sample_images(4)
    pq.write_table(pa.table({"jpg": [d for d, _ in samples]}), tmp_path / "plain.parquet")  # binary, no captions
    plain = open_source(tmp_path / "plain.parquet", image_column="jpg")
    assert [r.caption for r in plain] == [None] * 4
    assert contents(plain) == sorted(("", decode_image(d).tobytes()) for d, _ in samples)
    with pytest.raises(ValueError, match=r"plain.parquet has no image column 'image' \(columns: jpg\)"):
        open_source(tmp_path / "plain.parquet")
    (tmp_path / "hf").mkdir()
    write_parquet(tmp_path / "hf" / "a.parquet", samples, row_group_size=2)
    write_parquet(tmp_path / "hf" / "b.parquet", samples[:3], row_group_size=2)
    both = open_source(f"{tmp_path}/hf/*.parquet")
    assert len(both.units) == 4
    assert [r.key for r in both] == ["a/0", "a/1", "a/2", "a/3", "b/0", "b/1", "b/2"]
    with pytest.raises(ValueError, match="caption column 'image' is struct"):
        open_source(tmp_path / "hf" / "a.parquet", caption_column="image")
    with pytest.raises(ValueError, match="column 'caption' is string, expected image structs"):
        open_source(tmp_path / "hf" / "a.parquet", image_column="caption")


def test_path_only_image_structs_are_skipped_with_a_reason(tmp_path):
    data, _ = sample_images(1)[0]
    table = pa.table({"image": [{"bytes": data, "path": "a.png"}, {"bytes": None, "path": "/elsewhere/b.png"}]})
    pq.write_table(table, tmp_path / "x.parquet")
    records = list(open_source(tmp_path / "x.parquet"))
    assert records[0].skip is None and "/elsewhere/b.png" in records[1].skip


def test_webdataset_grouping_missing_images_and_cut_shards(tmp_path):
    data, _ = sample_images(1)[0]
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        add_member(tar, "a.txt", b" first \n")
        add_member(tar, "a.JPG", data)  # extensions are case-insensitive
        add_member(tar, "a.seg.png", b"a second image-like member: not the sample's image")
        add_member(tar, "b.json", b"{}")  # a sample whose download failed: no image
        add_member(tar, "b.txt", b"orphan")
        add_member(tar, "c.png", data)
    records = list(open_source(tmp_path / "00000.tar"))
    assert [(r.key, r.caption, r.skip) for r in records] == [
        ("00000/a", "first", None),
        ("00000/b", "orphan", "no image in the sample"),
        ("00000/c", None, None),
    ]
    assert records[0].data == data
    full = (tmp_path / "00000.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(full[:2600])  # cut inside a later member
    cut = list(open_source(tmp_path / "cut.tar"))
    assert cut[0].key == "cut/a" and cut[0].skip is None
    assert cut[-1].key == "cut/" and "unreadable" in cut[-1].skip


def test_patterns_and_errors_name_the_spec(tmp_path):
    write_shards(tmp_path / "wds", sample_images(4), 2)
    assert len(open_source(f"{tmp_path}/wds/*.tar").units) == 2
    assert len(open_source(tmp_path / "wds" / "00001.tar").units) == 1
    with pytest.raises(FileNotFoundError, match=r"1 of the 3 files .* missing \(first: .*00002.tar\)"):
        open_source(f"{tmp_path}/wds/{{00000..00002}}.tar")
    with pytest.raises(FileNotFoundError, match=r"no files match .*\*\.parquet"):
        open_source(f"{tmp_path}/wds/*.parquet")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_source(tmp_path / "nowhere")
    (tmp_path / "one.png").write_bytes(sample_images(1)[0][0])
    (tmp_path / "list.csv").write_text("a,b\n")
    for spec in (tmp_path / "one.png", f"{tmp_path}/*.csv"):
        with pytest.raises(ValueError, match="a folder of images.*parquet.*tar"):
            open_source(spec)
    with pytest.raises(FileNotFoundError, match=r"no image files .* DIR/\*\.parquet"):
        open_source(tmp_path / "wds")

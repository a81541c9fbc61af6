"""The data stream: every sample once per epoch across ranks × workers, exact resume, bad files skipped."""

import io
import itertools
import json
from collections import Counter
from dataclasses import dataclass

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tests.data.test_readers import sample_images, write_folder, write_parquet, write_shards
from vlv.data import DataStream, Record, Source, open_source

S = 8


def take(source, n: int, *, rank: int = 0, world_size: int = 2, workers: int = 2, **kw) -> list[dict]:
    """The first n batches a rank's DataLoader yields."""
    kw = {"image_size": S, "batch_size": 2, "seed": 3, "shuffle_buffer": 4, **kw}
    stream = DataStream(source, rank=rank, world_size=world_size, **kw)
    return list(itertools.islice(DataLoader(stream, batch_size=None, num_workers=workers), n))


def epoch0_keys(source, per_rank: int, **kw) -> Counter:
    """Keys of all slots' epoch-0 records (batches of one record, so a batch's position is its record's)."""
    keys = Counter()
    for rank in range(2):
        for b in take(source, per_rank, rank=rank, batch_size=1, **kw):
            if b["position"]["epoch"] == 0:
                keys.update(b["keys"])
    return keys


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    samples = sample_images(22)
    return {
        "folder": open_source(write_folder(root / "folder", samples[:12])),  # 1 unit: sample-level split
        "parquet": open_source(write_parquet(root / "x.parquet", samples[:12], row_group_size=100)),  # 1 row group
        "groups": open_source(write_parquet(root / "y.parquet", samples[:12], row_group_size=5)),  # 3 < 4 slots
        "shards": open_source(f"{write_shards(root / 'wds', samples, 8)}/{{00000..00007}}.tar"),  # unit-level split
    }


@pytest.mark.parametrize("form, n", [("folder", 12), ("parquet", 12), ("groups", 12), ("shards", 22)])
def test_every_sample_once_per_epoch_over_two_ranks_of_two_workers(sources, form, n):
    source = sources[form]
    # a slot reads 3 (sample split) or at most 6 (two shards of ≤ 3) records an epoch: 14 batches cover epoch 0
    keys = epoch0_keys(source, per_rank=14)
    assert sorted(keys) == sorted(r.key for r in source) and set(keys.values()) == {1} and len(keys) == n
    assert epoch0_keys(source, per_rank=14, shuffle=False) == keys


def test_batches_say_where_they_come_from(sources):
    batches = take(sources["shards"], 4, rank=1)
    assert [b["slot"] for b in batches] == [2, 3, 2, 3]  # slot = rank * W + worker, workers taken round-robin
    assert [b["logical_worker"] for b in take(sources["shards"], 2, rank=1, first_worker=1)] == [1, 0]
    b = batches[0]
    assert b["images"].dtype == torch.uint8 and b["images"].shape == (2, 3, S, S)
    assert len(b["keys"]) == len(b["captions"]) == 2 and b["skipped"] == []
    assert b["position"] == {"epoch": 0, "unit": 0, "offset": 2}


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for name in ("keys", "slot", "position", "skipped"):
            assert x[name] == y[name], name
        assert torch.equal(x["images"], y["images"])


@pytest.mark.parametrize("form", ["groups", "shards"])
def test_resume_from_any_batch_continues_exactly(sources, form):
    source, total = sources[form], 14  # 7 batches of 2 a slot: several epochs for both splits
    for rank in range(2):
        run = take(source, total, rank=rank)
        assert len({b["position"]["epoch"] for b in run}) >= 3
        for consumed in (1, 5, 8):
            # what a training driver saves: the last position of every slot, through JSON (its keys become strings)
            start = json.loads(json.dumps({b["slot"]: b["position"] for b in run[:consumed]}))
            resumed = take(source, total - consumed, rank=rank, start=start, first_worker=consumed % 2)
            assert_same_batches(resumed, run[consumed:])


def test_resume_without_workers(sources):
    kw = {"world_size": 1, "workers": 0, "batch_size": 3}
    run = take(sources["shards"], 12, **kw)
    assert {b["slot"] for b in run} == {0} and run[-1]["position"]["epoch"] >= 1
    for consumed in (4, 7):
        assert_same_batches(
            take(sources["shards"], 12 - consumed, start={0: run[consumed - 1]["position"]}, **kw), run[consumed:]
        )


def test_bad_files_are_skipped_and_reported(tmp_path):
    samples = sample_images(6)
    write_folder(tmp_path, samples)
    bad = {"empty": b"", "text": b"hello", "cut": samples[0][0][:60]}
    for name, data in bad.items():
        (tmp_path / f"{name}.jpg").write_bytes(data)
    buf = io.BytesIO()
    Image.new("RGBA", (4, 4)).save(buf, "PNG")
    (tmp_path / "nocap.png").write_bytes(buf.getvalue())
    source = open_source(tmp_path)
    good = {r.key for r in source} - set(bad)
    runs = {req: take(source, 12, world_size=1, workers=0, batch_size=1, require_captions=req) for req in (False, True)}
    for req, run in runs.items():
        yielded = Counter(k for b in run if b["position"]["epoch"] == 0 for k in b["keys"])
        skipped = dict(s for b in run for s in b["skipped"])
        refused = set(bad) | ({"nocap", "sub/05"} if req else set())  # sample 5 has no caption either
        assert set(yielded) == good - refused and set(yielded.values()) == {1}
        assert set(skipped) == refused
        assert run[-1]["position"]["epoch"] >= 1
    reasons = dict(s for b in runs[False] for s in b["skipped"])
    assert reasons == {"empty": "empty file", "text": "not an image", "cut": "truncated"}
    assert skipped["nocap"] == "no caption"  # checked before decoding: captionless files are not even decoded


@dataclass(frozen=True)
class CachedUnit:
    """A unit of already-preprocessed samples, as a latent cache provides."""

    first: int

    def __iter__(self):
        for i in range(self.first, self.first + 3):
            data = {"images": torch.full((3, S, S), i, dtype=torch.uint8), "latents": torch.full((4, 2, 2), float(i))}
            yield Record(f"c{i}", data, f"caption {i}")


def test_dict_records_pass_through_and_stack():
    source = Source("cache", "cache", [CachedUnit(0), CachedUnit(3)])
    batch = take(source, 1, world_size=1, workers=0, batch_size=4, shuffle=False)[0]
    assert batch["keys"] == ["c0", "c1", "c2", "c3"] and batch["captions"][3] == "caption 3"
    assert batch["latents"].shape == (4, 4, 2, 2) and batch["latents"][:, 0, 0, 0].tolist() == [0, 1, 2, 3]
    assert batch["images"][:, 0, 0, 0].tolist() == [0, 1, 2, 3]


def test_a_slot_without_samples_fails_clearly():
    source = Source("cache", "cache", [CachedUnit(0)])  # 3 records, 4 slots: slot 3 gets none
    with pytest.raises(RuntimeError, match="slot 3 of 4 has no record in cache"):
        take(source, 1, rank=3, world_size=4, workers=0)

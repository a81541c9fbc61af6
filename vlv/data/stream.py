"""The training data stream: a source's records → shuffled, decoded batches, split over ranks and workers, with an
exact resume position.

`DataStream` is an infinite `IterableDataset` (epochs repeat; training counts steps), meant for
`DataLoader(stream, batch_size=None, num_workers=W)`. Its semantics are exact, because resuming depends on them:

- Slots. There are `n_slots = world_size * W` readers (W = 1 without workers). Physical worker w of rank r serves
  logical worker `(w + first_worker) % W`, slot `s = r * W + logical`.
- Split. In epoch e the unit list is shuffled by a generator seeded from (seed, e), identically on every rank. With
  at least `n_slots` units, slot s reads units `order[s::n_slots]`; with fewer (a tiny dataset), every slot reads
  every unit and keeps the records whose running index in the epoch is ≡ s mod `n_slots`. Either way each record
  is read by exactly one slot per epoch. Epochs are counted per slot: slots with more data finish theirs later.
- Shuffle. Within a unit, records pass through a shuffle buffer seeded from (seed, e, the unit's place in the
  epoch order); the buffer is drained at the unit's end, so it never spans units and a unit replays identically.
- Decode. After the shuffle, each record is decoded and preprocessed to uint8 (3, S, S) by the one image transform
  (`vlv.images`); an unreadable record, or one without a caption when `require_captions`, is skipped and reported
  in the next batch's "skipped", never raised. Records holding a dict of tensors (a latent cache) pass untouched.
- Position. A batch's "position" {"epoch": e, "unit": k, "offset": n} is where its slot stands after the batch:
  epoch e, k-th unit of the slot's list for e, n records of that unit emitted by its shuffle buffer (skips counted).
- Resume. `start={slot: position}` makes each slot skip k units, replay unit k's buffer and drop its first n
  records without decoding them; the stream then continues exactly as the uninterrupted one (same world size and
  worker count). DataLoader takes batches from its workers round-robin starting at physical worker 0, so the
  caller passes `first_worker = (batches consumed so far) % W` with the last position of every slot.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from vlv.config import derive_seed
from vlv.data.readers import Record, Source
from vlv.images import UnreadableImage, decode_image, preprocess

ORIGIN = {"epoch": 0, "unit": 0, "offset": 0}


class DataStream(IterableDataset):
    """source's records → an endless stream of batches (see the module docstring for the exact semantics).

    A batch: {"images": uint8 (b, 3, S, S) (or the stacked fields of dict records), "captions": list[str | None],
    "keys": list[str], "records": list[str] (f"{unit index in the source}:{key}", a name no other record of the
    source shares, even when two units' files have the same name), "skipped": list[(key, reason)] since this slot's
    previous batch, "slot": int, "logical_worker": int, "position": {"epoch", "unit", "offset"}}. DataLoader's
    default conversion turns the (key, reason) tuples into 2-lists.
    """

    def __init__(
        self,
        source: Source,
        *,
        image_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        require_captions: bool = False,
        start: dict | None = None,
        first_worker: int = 0,
    ):
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size < 1 or image_size < 1:
            raise ValueError(f"batch_size and image_size must be positive, got {batch_size} and {image_size}")
        self.source = source
        self.image_size = image_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        self.require_captions = require_captions
        # Positions saved as JSON come back with string keys: slots are ints either way.
        self.start = {int(slot): dict(pos) for slot, pos in (start or {}).items()}
        self.first_worker = first_worker

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, physical = (info.num_workers, info.id) if info is not None else (1, 0)
        logical = (physical + self.first_worker) % workers
        slot = self.rank * workers + logical
        start = self.start.get(slot, ORIGIN)
        items, skipped = [], []
        epoch, usable = None, 0  # usable records in the current epoch: a slot with none could never fill a batch
        for position, unit, record in self._records(slot, self.world_size * workers):
            if position["epoch"] != epoch:
                whole = epoch != start["epoch"] or (start["unit"], start["offset"]) == (0, 0)
                if epoch is not None and whole and usable == 0:
                    raise RuntimeError(f"slot {slot} read no usable record in epoch {epoch} of {self.source.spec}")
                epoch, usable = position["epoch"], 0
            fields, reason = load_record(record, self.image_size, require_captions=self.require_captions)
            if fields is None:
                skipped.append((record.key, reason))
                continue
            usable += 1
            items.append((f"{unit}:{record.key}", record, fields))
            if len(items) == self.batch_size:
                batch = _collate(items)
                batch.update(skipped=skipped, slot=slot, logical_worker=logical, position=position)
                yield batch
                items, skipped = [], []

    def _records(self, slot: int, n_slots: int) -> Iterator[tuple[dict, int, Record]]:
        """This slot's records in stream order from its start position, each with the position after it and the
        index of its unit in the source."""
        units = self.source.units
        start = self.start.get(slot, ORIGIN)
        for epoch in itertools.count(start["epoch"]):
            first_unit, drop = (start["unit"], start["offset"]) if epoch == start["epoch"] else (0, 0)
            order = list(range(len(units)))
            if self.shuffle:
                random.Random(derive_seed(self.seed, f"data/epoch{epoch}/units")).shuffle(order)
            by_unit = len(units) >= n_slots
            places = range(slot, len(order), n_slots) if by_unit else range(len(order))
            running = itertools.count()  # the epoch's record index over all units, for the sample-level split
            read = 0
            for k, place in enumerate(places):
                unit = units[order[place]]
                records = iter(unit) if by_unit else _every_nth(unit, running, n_slots, slot)
                if k < first_unit:
                    if not by_unit:  # skipped whole, but its records still count in the running index
                        for _ in records:
                            pass
                    continue
                rng = random.Random(derive_seed(self.seed, f"data/epoch{epoch}/unit{place}"))
                for n, record in enumerate(self._shuffled(records, rng), 1):
                    read += 1
                    if k == first_unit and n <= drop:
                        continue  # consumed before the resume: dropped without decoding
                    yield {"epoch": epoch, "unit": k, "offset": n}, order[place], record
            if read == 0 and first_unit == 0:
                raise RuntimeError(
                    f"slot {slot} of {n_slots} has no record in {self.source.spec}: use fewer ranks × workers"
                )

    def _shuffled(self, records: Iterator[Record], rng: random.Random) -> Iterator[Record]:
        """A shuffle buffer over one unit: emit a random held record for each new one, then drain in random order."""
        if not self.shuffle or self.shuffle_buffer <= 1:
            yield from records
            return
        buffer = []
        for record in records:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(record)
                continue
            i = rng.randrange(len(buffer))
            yield buffer[i]
            buffer[i] = record
        rng.shuffle(buffer)
        yield from buffer


def load_record(
    record: Record, image_size: int, *, require_captions: bool = False
) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """A record → (its tensors, None), or (None, the reason to skip it): the one decoding step of streamed and
    index-addressed data alike. Records already holding tensors (a latent cache) pass untouched."""
    if record.skip:
        return None, record.skip
    if require_captions and not (record.caption and record.caption.strip()):
        return None, "no caption"
    if isinstance(record.data, dict):
        return record.data, None
    try:
        return {"images": preprocess(decode_image(record.data), image_size)}, None  # (3, S, S) uint8
    except UnreadableImage as e:
        return None, e.reason


def _every_nth(records: Iterable[Record], running: Iterator[int], n: int, slot: int) -> Iterator[Record]:
    """The records whose running index (drawn from `running`, shared by the epoch's units) is ≡ slot mod n."""
    for record in records:
        if next(running) % n == slot:
            yield record


def _collate(items: list[tuple[str, Record, dict[str, torch.Tensor]]]) -> dict:
    names = items[0][2].keys()
    if any(fields.keys() != names for *_, fields in items):
        raise ValueError(f"records of one batch hold different fields: {sorted({k for *_, f in items for k in f})}")
    batch = {name: torch.stack([fields[name] for *_, fields in items]) for name in names}  # (b, ...)
    batch.update(
        captions=[r.caption for _, r, _ in items], keys=[r.key for _, r, _ in items], records=[n for n, *_ in items]
    )
    return batch

"""Random-access training data: the global batch of every step is fixed by the step alone.

For data that can be read at any index — an image folder, a latent cache — the run's sample order is one seeded
permutation per epoch over the whole dataset, read as an endless sequence of positions p = 0, 1, 2, …. Step t's
global batch is positions [t·B, (t+1)·B); process r with A accumulation micro-batches of b = B / (world · A) images
takes micro-batch m as positions t·B + (r·A + m)·b + [0, b). Each image also gets a noise seed from its position.
So what a step sees — images, order, noise — depends on neither the number of processes nor the accumulation, and
a resumed run needs nothing but the step to continue exactly (streamed tar shards cannot do this; see
`vlv.data.stream`, which records per-slot positions instead).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset, Sampler

from vlv.config import derive_seed
from vlv.data.readers import FolderUnit, Record
from vlv.data.stream import load_record

log = logging.getLogger(__name__)


def sample_seed(seed: int, position: int) -> int:
    """The noise seed of the image at `position` of a run seeded `seed`."""
    return derive_seed(seed, f"sample/{position}") % 2**62


class IndexedBatches(Dataset):
    """Item u = micro-batch u of this process: step u // A, micro-batch u % A (see the module docstring).

    records: a sequence of `Record` (random access). A micro-batch is {"images": uint8 (b, 3, S, S) (or the stacked
    tensors of dict records, e.g. cached moments), "captions", "keys", "records": each image's index in `records`,
    "seeds": int64 (b,), "skipped": [(key, reason)], "step": t}. Unreadable records are dropped from their micro-batch
    and reported; a micro-batch left empty takes the next readable positions after the run's global batch (never an
    empty batch).
    """

    def __init__(
        self,
        records: Sequence[Record],
        *,
        image_size: int,
        global_batch: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        accumulation: int = 1,
        require_captions: bool = False,
    ):
        if global_batch % (world_size * accumulation):
            raise ValueError(
                f"global batch {global_batch} does not split into {world_size} processes × {accumulation} "
                "accumulation steps"
            )
        if not len(records):
            raise ValueError("no training records")
        self.records, self.image_size, self.seed = records, image_size, seed
        self.B, self.rank, self.A = global_batch, rank, accumulation
        self.b = global_batch // (world_size * accumulation)
        self.require_captions = require_captions
        self._perm: tuple[int, torch.Tensor] | None = None  # (epoch, permutation) of the last epoch used

    def index(self, position: int) -> int:
        """The record read at run position `position`: a seeded permutation per epoch."""
        epoch, i = divmod(position, len(self.records))
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, f"data/epoch{epoch}"))
            self._perm = (epoch, torch.randperm(len(self.records), generator=g))
        return int(self._perm[1][i])

    def __getitem__(self, u: int) -> dict:
        step, m = divmod(u, self.A)
        first = step * self.B + (self.rank * self.A + m) * self.b
        positions = list(range(first, first + self.b))
        items, skipped = [], []
        spare = (step + 1) * self.B + (self.rank * self.A + m) * self.b  # beyond this step: only if all are bad
        while True:
            for p in positions:
                record = self.records[self.index(p)]
                fields, reason = load_record(record, self.image_size, require_captions=self.require_captions)
                if fields is None:
                    skipped.append((record.key, reason))
                else:
                    items.append((p, record, fields))
            if items:
                break
            if len(skipped) > 10 * self.b + len(self.records):
                raise RuntimeError(f"no readable record among the last {len(skipped)} read; is the data usable?")
            positions, spare = list(range(spare, spare + self.b)), spare + self.B
        batch = {k: torch.stack([f[k] for _, _, f in items]) for k in items[0][2]}
        batch.update(
            captions=[r.caption for _, r, _ in items],
            keys=[r.key for _, r, _ in items],
            records=[self.index(p) for p, _, _ in items],
            seeds=torch.tensor([sample_seed(self.seed, p) for p, _, _ in items], dtype=torch.long),
            skipped=skipped,
            step=step,
        )
        return batch

    def __len__(self) -> int:
        raise TypeError("IndexedBatches is endless: iterate it with `FromStep`")


class FromStep(Sampler):
    """Micro-batch numbers from `step` on, endlessly (A per step)."""

    def __init__(self, step: int, accumulation: int):
        self.first = step * accumulation

    def __iter__(self):
        u = self.first
        while True:
            yield u
            u += 1


class FolderRecords(Sequence):
    """An image folder's records by index (a `vlv.data.readers` folder source, flattened)."""

    def __init__(self, units: list[FolderUnit]):
        self.items = [(unit.root, name) for unit in units for name in unit.names]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Record:
        root, name = self.items[i]
        return next(iter(FolderUnit(root, (name,))))

"""The latent cache: the frozen VAE's work done once per image instead of once per step.

Stage 1 encodes every training image with the frozen VAE at every step (the official recipe does). The VAE is
frozen and its posterior depends on the image alone, so `write_cache` stores, per image, the posterior's moments
(mean and log-variance, (2C, h, w)) and the preprocessed image (uint8 (3, S, S): the encoder still reads pixels,
and decoding + resizing are not repeated either). Training draws each step's latent from the moments with the
image's own seeded noise (`Autoencoder` in `vlv.compositions`), so a cached run samples latents exactly as an
uncached one — it only skips the VAE encoder. The frozen vision tower's tokens are not cached: at the paper's
577 × 1024 per image they would take ~1.2 MB per image in bf16 (≈ 48 TB for 40M images), far more than re-running
the tower costs.

    DIR/cache.json          image size, the teacher's VAE fingerprint, shards, skipped inputs (written last)
    DIR/00000.safetensors   images uint8 (n, 3, S, S), moments (n, 2C, h, w)
    DIR/00000.json          keys and captions of those n images

Shard i holds the readable records among positions [i·shard_size, (i+1)·shard_size) of the source's stored order;
each shard is written atomically, so an interrupted `vlv cache-latents` run continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from vlv.data.readers import Record, Source
from vlv.images import UnreadableImage, decode_image, preprocess

log = logging.getLogger(__name__)

CACHE_NAME = "cache.json"


def vae_fingerprint(decoder) -> dict:
    """What a cache must agree with: the VAE's config and a hash of its weights, and the teacher's image size."""
    vae = decoder.vae
    if vae is None:
        raise ValueError("this teacher works in pixel space: it has no VAE latents to cache")
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return {"image_size": decoder.cfg.image_size, "latent_channels": vae.config.latent_channels,
            "vae_encoder_sha256": digest.hexdigest()}  # fmt: skip


def _chunks(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    chunk = []
    for record in records:
        chunk.append(record)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@torch.no_grad()
def write_cache(
    decoder,
    source: Source,
    out: str | os.PathLike,
    *,
    batch_size: int = 32,
    shard_size: int = 1000,
    dtype: torch.dtype = torch.float32,
) -> dict:
    """Encode every readable image of `source` with `decoder`'s frozen VAE into shards under `out`.

    Skips shards already written (a rerun continues). Returns the summary written to cache.json.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = vae_fingerprint(decoder)
    size, device = decoder.cfg.image_size, decoder.device
    shards, skipped = [], {}
    bar = tqdm(desc="cache latents", unit="img")
    for i, chunk in enumerate(_chunks(iter(source), shard_size)):
        name = f"{i:05d}"
        done = out / f"{name}.json"
        if done.is_file():  # written by an earlier run
            meta = json.loads(done.read_text())
            shards.append({"file": f"{name}.safetensors", "count": len(meta["keys"])})
            skipped.update(meta["skipped"])
            bar.update(len(chunk))
            continue
        images, keys, captions, bad = [], [], [], {}
        for record in chunk:
            try:
                if record.skip:
                    raise UnreadableImage(record.skip)
                images.append(preprocess(decode_image(record.data), size))  # (3, S, S) uint8
                keys.append(record.key)
                captions.append(record.caption)
            except UnreadableImage as e:
                bad[record.key] = e.reason
                log.warning("skipped %s: %s", record.key, e.reason)
        moments = [
            decoder.encode_moments(torch.stack(images[j : j + batch_size]).to(device).float() / 255).to(dtype).cpu()
            for j in range(0, len(images), batch_size)
        ]  # each (b, 2C, h, w)
        tensors = {"images": torch.stack(images), "moments": torch.cat(moments).contiguous()} if images else {}
        tmp = out / f".{name}.safetensors.tmp"
        save_file(tensors, str(tmp))
        os.replace(tmp, out / f"{name}.safetensors")
        tmp = out / f".{name}.json.tmp"
        tmp.write_text(json.dumps({"keys": keys, "captions": captions, "skipped": bad}))
        os.replace(tmp, done)  # the shard counts as written only once its key list is in place
        shards.append({"file": f"{name}.safetensors", "count": len(keys)})
        skipped.update(bad)
        bar.update(len(chunk))
    bar.close()
    summary = {**fingerprint, "source": source.spec, "count": sum(s["count"] for s in shards), "shards": shards,
               "skipped": skipped, "dtype": str(dtype).removeprefix("torch.")}  # fmt: skip
    (out / CACHE_NAME).write_text(json.dumps(summary, indent=2))
    return summary


class CacheRecords(Sequence):
    """A latent cache's records by index; each record's data is {"images": uint8 (3, S, S), "moments": (2C, h, w)}."""

    def __init__(self, directory: str | os.PathLike, decoder=None):
        """decoder: when given, the cache must have been written by this teacher's VAE at its image size."""
        self.dir = Path(directory)
        meta_file = self.dir / CACHE_NAME
        if not meta_file.is_file():
            raise FileNotFoundError(f"no latent cache at {self.dir} (missing {CACHE_NAME}; see `vlv cache-latents`)")
        self.meta = json.loads(meta_file.read_text())
        if decoder is not None:
            expected, found = vae_fingerprint(decoder), {k: self.meta.get(k) for k in vae_fingerprint(decoder)}
            if expected != found:
                raise ValueError(f"latent cache {self.dir} was written for another teacher or image size: "
                                 f"cache {found}, model {expected}")  # fmt: skip
        self.index = [(s["file"], row) for s in self.meta["shards"] for row in range(s["count"])]
        self._texts: dict[str, dict] = {}
        self._open: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Record:
        file, row = self.index[i]
        if file not in self._open:  # opened lazily, so that each DataLoader worker holds its own handles
            self._open[file] = safe_open(str(self.dir / file), framework="pt")
            self._texts[file] = json.loads((self.dir / file).with_suffix(".json").read_text())
        handle, text = self._open[file], self._texts[file]
        data = {name: handle.get_slice(name)[row : row + 1][0] for name in ("images", "moments")}
        return Record(text["keys"][row], data, text["captions"][row])

    def __getstate__(self) -> dict:  # file handles do not cross into worker processes; they reopen there
        return {**self.__dict__, "_open": {}}

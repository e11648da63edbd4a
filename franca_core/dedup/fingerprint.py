"""Fingerprint every image of a set of webdataset shards (``hashing.hash_images`` per shard, in parallel).

Shards are independent, so ``workers > 1`` fingerprints them in a spawn process pool (spawn, not fork: the parent
may hold s3fs's event-loop thread). Rows come back in shard order, then in tar order.

A damaged shard never stops the run: ``iter_tar`` yields its readable samples and its damage (not a tar, empty,
truncated; a bad JSON member) is returned in ``Fingerprints.damage`` for the caller to count and list. Progress
(shards done, images, rate, ETA) goes to an optional callback after each shard; this library never prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from multiprocessing import get_context
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa

from franca_core.data.img2dataset_io import TarDamage, iter_tar
from franca_core.dedup.hashing import HashBatch, hash_images
from franca_core.dedup.metadata import SAMPLE_METADATA, json_metadata


@dataclass
class Fingerprints:
    """One row per image: where it is (``shard`` URI, tar ``key``), its ``sample_id``, hashes and JSON metadata.

    ``meta`` holds the ``SAMPLE_METADATA`` columns read from each sample's JSON member (``None`` where absent);
    ``damage`` the shards that were not wholly readable.
    """

    shard: list[str]
    key: list[str]
    sample_id: list[str]
    hashes: HashBatch
    meta: dict[str, list[Any]] = field(default_factory=lambda: {name: [] for name in SAMPLE_METADATA.names})
    damage: list[TarDamage] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.key)

    def json_metadata(self) -> pa.Table:
        """``sample_id`` and the ``SAMPLE_METADATA`` columns read from the samples' JSON members."""
        return pa.table({"sample_id": self.sample_id, **self.meta},
                        schema=pa.schema([("sample_id", pa.string()), *SAMPLE_METADATA]))


@dataclass(frozen=True)
class Progress:
    """Where a ``fingerprint_shards`` run stands, after one more shard."""

    shards_done: int
    shards_total: int
    images: int
    bad_shards: int
    elapsed_s: float

    @property
    def images_per_s(self) -> float:
        """Images fingerprinted per second of wall time so far."""
        return self.images / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float:
        """Seconds left, assuming the remaining shards take as long as the finished ones on average."""
        return self.elapsed_s / self.shards_done * (self.shards_total - self.shards_done) if self.shards_done else 0.0

    def __str__(self) -> str:
        minutes, seconds = divmod(round(self.eta_s), 60)
        eta = f"{minutes // 60:02d}:{minutes % 60:02d}:{seconds:02d}"  # hours beyond 24 too
        bad = f", {self.bad_shards} bad" if self.bad_shards else ""
        return (f"{self.shards_done}/{self.shards_total} shards{bad}, {self.images} images, "
                f"{self.images_per_s:.1f} images/s, ETA {eta}")


def fingerprint_shard(shard_uri: str, phash_size: int = 8, signature_size: int = 4,
                      max_pixels: int | None = None) -> Fingerprints:
    """Fingerprints of one tar's readable samples; ``sample_id`` comes from each sample's JSON, else its key."""
    fs, path = fsspec.core.url_to_fs(shard_uri)
    damage = TarDamage(shard_uri)
    keys, ids, blobs = [], [], []
    meta: dict[str, list[Any]] = {name: [] for name in SAMPLE_METADATA.names}
    for key, image, sample in iter_tar(fs, path, damage):
        keys.append(key)
        ids.append(str(sample.get("sample_id") or key))
        blobs.append(image)
        for name, value in json_metadata(sample).items():
            meta[name].append(value)
    return Fingerprints([shard_uri] * len(keys), keys, ids, hash_images(blobs, phash_size, signature_size, max_pixels),
                        meta, [damage] if damage else [])


def concat(parts: list[Fingerprints], phash_size: int = 8, signature_size: int = 4) -> Fingerprints:
    """Concatenate fingerprints (an empty list gives empty arrays of the right widths)."""
    if not parts:
        return Fingerprints([], [], [], hash_images([], phash_size, signature_size))
    h = [p.hashes for p in parts]
    batch = HashBatch(list(chain.from_iterable(b.content_hash for b in h)), np.concatenate([b.phash for b in h]),
                      np.concatenate([b.signature for b in h]), np.concatenate([b.width for b in h]),
                      np.concatenate([b.height for b in h]), list(chain.from_iterable(b.error for b in h)))
    meta = {name: list(chain.from_iterable(p.meta[name] for p in parts)) for name in SAMPLE_METADATA.names}
    return Fingerprints(list(chain.from_iterable(p.shard for p in parts)),
                        list(chain.from_iterable(p.key for p in parts)),
                        list(chain.from_iterable(p.sample_id for p in parts)), batch, meta,
                        list(chain.from_iterable(p.damage for p in parts)))


def fingerprint_shards(shard_uris: list[str], phash_size: int = 8, signature_size: int = 4, workers: int = 1,
                       max_pixels: int | None = None,
                       progress: Callable[[Progress], None] | None = None) -> Fingerprints:
    """Fingerprints of every readable image of ``shard_uris``, with up to ``workers`` processes.

    Args:
        shard_uris: webdataset tars (paths or fsspec URIs).
        phash_size: side of the perceptual hash's DCT block.
        signature_size: side of the signature's DCT block per channel.
        workers: processes; 1 fingerprints in this process.
        max_pixels: images over this many pixels (by their header) are reported undecodable, never decoded.
        progress: called after each shard (in completion order) with the counts so far.
    """
    fn = partial(fingerprint_shard, phash_size=phash_size, signature_size=signature_size, max_pixels=max_pixels)
    start, counts = time.monotonic(), [0, 0, 0]  # shards done, images, bad shards
    parts: list[Fingerprints | None] = [None] * len(shard_uris)

    def done(i: int, part: Fingerprints) -> None:
        parts[i] = part
        counts[0] += 1
        counts[1] += len(part)
        counts[2] += any(d.error for d in part.damage)
        if progress is not None:
            progress(Progress(counts[0], len(shard_uris), counts[1], counts[2], time.monotonic() - start))

    if workers <= 1 or len(shard_uris) <= 1:
        for i, uri in enumerate(shard_uris):
            done(i, fn(uri))
    else:
        with ProcessPoolExecutor(min(workers, len(shard_uris)), mp_context=get_context("spawn")) as pool:
            futures: dict[Future[Fingerprints], int] = {pool.submit(fn, uri): i for i, uri in enumerate(shard_uris)}
            for future in as_completed(futures):
                done(futures[future], future.result())
    return concat([p for p in parts if p is not None], phash_size, signature_size)

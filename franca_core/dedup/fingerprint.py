"""Fingerprint every image of a set of webdataset shards (``hashing.hash_images`` per shard, in parallel).

Shards are independent, so ``workers > 1`` fingerprints them in a spawn process pool (spawn, not fork: the parent
may hold s3fs's event-loop thread). Rows come back in shard order, then in tar order.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import chain
from multiprocessing import get_context

import fsspec
import numpy as np

from franca_core.data.img2dataset_io import iter_tar
from franca_core.dedup.hashing import HashBatch, hash_images


@dataclass
class Fingerprints:
    """One row per image: where it is (``shard`` URI, tar ``key``), its ``sample_id`` and its hashes."""

    shard: list[str]
    key: list[str]
    sample_id: list[str]
    hashes: HashBatch

    def __len__(self) -> int:
        return len(self.key)


def fingerprint_shard(shard_uri: str, phash_size: int = 8, signature_size: int = 4) -> Fingerprints:
    """Fingerprints of one tar; ``sample_id`` comes from each sample's JSON (img2dataset's extra column)."""
    fs, path = fsspec.core.url_to_fs(shard_uri)
    keys, ids, blobs = [], [], []
    for key, image, meta in iter_tar(fs, path):
        keys.append(key)
        ids.append(str(meta.get("sample_id") or key))
        blobs.append(image)
    return Fingerprints([shard_uri] * len(keys), keys, ids, hash_images(blobs, phash_size, signature_size))


def concat(parts: list[Fingerprints], phash_size: int = 8, signature_size: int = 4) -> Fingerprints:
    """Concatenate fingerprints (an empty list gives empty arrays of the right widths)."""
    if not parts:
        return Fingerprints([], [], [], hash_images([], phash_size, signature_size))
    h = [p.hashes for p in parts]
    batch = HashBatch(list(chain.from_iterable(b.content_hash for b in h)), np.concatenate([b.phash for b in h]),
                      np.concatenate([b.signature for b in h]), np.concatenate([b.width for b in h]),
                      np.concatenate([b.height for b in h]), list(chain.from_iterable(b.error for b in h)))
    return Fingerprints(list(chain.from_iterable(p.shard for p in parts)),
                        list(chain.from_iterable(p.key for p in parts)),
                        list(chain.from_iterable(p.sample_id for p in parts)), batch)


def fingerprint_shards(shard_uris: list[str], phash_size: int = 8, signature_size: int = 4,
                       workers: int = 1) -> Fingerprints:
    """Fingerprints of every image of ``shard_uris``, with up to ``workers`` processes."""
    fn = partial(fingerprint_shard, phash_size=phash_size, signature_size=signature_size)
    if workers <= 1 or len(shard_uris) <= 1:
        parts = [fn(uri) for uri in shard_uris]
    else:
        with ProcessPoolExecutor(min(workers, len(shard_uris)), mp_context=get_context("spawn")) as pool:
            parts = list(pool.map(fn, shard_uris))
    return concat(parts, phash_size, signature_size)

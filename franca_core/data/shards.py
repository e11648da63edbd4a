"""Stream multi-crop training batches from the webdataset tar shards listed in a dedup manifest.

The dedup stage writes ``manifest.parquet`` (``sample_id, shard, key, kept, ...``; ``shard`` is the full URI of an
img2dataset tar whose members are ``<key>.jpg``, ``<key>.txt``, ``<key>.json``). ``ShardIndex`` reads the KEPT rows;
``ShardStream`` (a torch ``IterableDataset``) streams them from local disk or ``s3://`` through fsspec and yields whole
training batches, decoded, multi-cropped and CyclicMask-collated inside the DataLoader workers. Reference: the
shard splitting of webdataset (``split_by_node`` / ``split_by_worker``) and ``dinov2/data/loaders.py``.

The data order is a pure function of (manifest, seed, world size, loader workers, batch size), so a checkpoint needs
only the number of batches a rank has consumed to continue the order after a restart:

- epoch ``e`` permutes the shards, and each shard's kept samples, with seeds derived from ``(seed, e, shard)``;
- the ``S = world_size * loader_workers`` slots (one per DataLoader worker of every rank) split an epoch by shard
  (slot ``s`` reads shards ``s, s+S, ...`` of the permuted list) when there are at least ``S`` shards, else by
  sample (every slot reads every shard and keeps every S-th sample: only for tiny sets, where I/O does not matter);
- each slot streams epoch after epoch without end (so ranks never run out at different steps under DDP) and yields
  whole batches; the DataLoader interleaves its workers round-robin, so batch ``j`` of a rank is worker ``j % W``'s;
- a resumed stream skips the samples its slot already delivered by counting manifest rows, without decoding them.

Augmentation is seeded per (seed, epoch, sample) and the masks per (seed, slot, batch), so a resumed run also sees
the same crops and masks. Each batch carries ``ids``: (B,) int64 indices of its samples in the sorted kept list.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset import TarWriter
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from franca_core.config import TrainConfig
from franca_core.data.collate import MultiCropCollate
from franca_core.data.datasets import decode_image
from franca_core.data.multicrop import MultiCropAugmentation

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
MANIFEST_COLUMNS = ("sample_id", "shard", "key", "content_hash", "phash", "caption", "url", "kept", "reason")


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SeedSequence mixing: nearby inputs give unrelated seeds)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class ShardIndex:
    """The kept samples of a manifest, grouped by shard; sample id = position in the (shard, key)-sorted list."""

    shards: tuple[str, ...]
    keys: tuple[tuple[str, ...], ...]

    @classmethod
    def from_manifest(cls, uri: str, storage_options: dict[str, Any] | None = None) -> ShardIndex:
        """Read the ``shard``, ``key`` and ``kept`` columns of a manifest Parquet (local path or URI)."""
        fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        if not fs.exists(path):
            raise FileNotFoundError(f"manifest not found: {uri}")
        table = pq.read_table(path, filesystem=fs, columns=["shard", "key", "kept"])
        rows = sorted((s, k) for s, k, kept in zip(table["shard"].to_pylist(), table["key"].to_pylist(),
                                                   table["kept"].to_pylist()) if kept)
        if not rows:
            raise ValueError(f"manifest {uri} has no kept samples")
        grouped: dict[str, list[str]] = {}
        for shard, key in rows:
            grouped.setdefault(shard, []).append(key)
        return cls(tuple(grouped), tuple(tuple(keys) for keys in grouped.values()))

    @property
    def n_samples(self) -> int:
        return sum(len(k) for k in self.keys)

    @property
    def offsets(self) -> list[int]:
        """Sample id of the first kept sample of each shard."""
        return np.concatenate([[0], np.cumsum([len(k) for k in self.keys])[:-1]]).astype(int).tolist()

    def epoch_plan(self, seed: int, epoch: int, slot: int, n_slots: int) -> list[tuple[int, np.ndarray]]:
        """What one slot reads in one epoch: ``(shard index, positions in that shard's key list)`` in order."""
        order = np.random.default_rng(derive_seed(seed, epoch)).permutation(len(self.shards))

        def shuffled(shard: int) -> np.ndarray:
            return np.random.default_rng(derive_seed(seed, epoch, shard, 1)).permutation(len(self.keys[shard]))

        if len(self.shards) >= n_slots:
            return [(int(sh), shuffled(int(sh))) for sh in order[slot::n_slots]]
        plan, start = [], 0
        for sh in order:
            positions = shuffled(int(sh))
            take = positions[(slot - start) % n_slots :: n_slots]  # epoch-global positions i with i % S == slot
            start += len(positions)
            if len(take):
                plan.append((int(sh), take))
        return plan


def batches_of_worker(consumed: int, worker: int, n_workers: int) -> int:
    """How many of a rank's first ``consumed`` batches came from DataLoader worker ``worker`` (round-robin)."""
    return max(0, (consumed - worker + n_workers - 1) // n_workers)


class ShardStream(IterableDataset):
    """Endless multi-crop batches of one rank: ``{global_crops, local_crops, masks, ids}`` (see ``collate.py``).

    Args:
        index: the kept samples.
        cfg: the ``train`` section (crops, masking, patch size, batch size, loader workers, seed).
        rank: this rank's index; ``world_size``: number of ranks.
        start_batches: batches this rank already consumed (the checkpointed data position).
        storage_options: fsspec options for the shard URIs (e.g. an S3 endpoint).
    """

    def __init__(self, index: ShardIndex, cfg: TrainConfig, rank: int = 0, world_size: int = 1,
                 start_batches: int = 0, storage_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        n_slots = world_size * max(cfg.loader_workers, 1)
        if index.n_samples < n_slots:
            raise ValueError(f"{index.n_samples} kept samples cannot feed {n_slots} loader slots "
                             f"({world_size} ranks x {cfg.loader_workers} workers)")
        self.index, self.cfg, self.rank, self.world_size = index, cfg, rank, world_size
        self.start_batches = start_batches
        self.storage_options = storage_options or {}
        self.augment = MultiCropAugmentation(cfg.crops)

    def _read_shard(self, shard: int) -> dict[str, bytes]:
        """Image bytes of the shard's kept keys (one sequential read of the tar, up to the last kept key).

        Stopping there also trains on the readable head of a truncated shard: dedup keeps only what it could read.
        """
        uri, wanted = self.index.shards[shard], set(self.index.keys[shard])
        images: dict[str, bytes] = {}
        with fsspec.open(uri, "rb", **self.storage_options) as f:
            for member in tar_file_iterator(f):
                key, ext = base_plus_ext(member["fname"])
                if key in wanted and ext is not None and ext.lower() in IMAGE_EXTENSIONS:
                    images[key] = member["data"]
                    if len(images) == len(wanted):
                        break
        if len(images) != len(wanted):
            lost = sorted(wanted - set(images))[:3]
            raise ValueError(f"shard {uri} lacks {len(wanted) - len(images)} kept samples, e.g. {lost}")
        return images

    def slot_samples(self, slot: int, n_slots: int, skip: int = 0) -> Iterator[tuple[int, int, str, bytes]]:
        """``(epoch, sample id, where, image bytes)`` of one slot, forever, after skipping ``skip`` samples."""
        offsets, epoch = self.index.offsets, 0
        while True:
            for shard, positions in self.index.epoch_plan(self.cfg.seed, epoch, slot, n_slots):
                if skip >= len(positions):  # delivered before the restart: not even read
                    skip -= len(positions)
                    continue
                images, keys = self._read_shard(shard), self.index.keys[shard]
                for pos in positions[skip:]:
                    where = f"{self.index.shards[shard]}:{keys[pos]}"
                    yield epoch, offsets[shard] + int(pos), where, images[keys[pos]]
                skip = 0
            epoch += 1

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if n_workers != max(self.cfg.loader_workers, 1):
            raise ValueError(f"ShardStream built for {self.cfg.loader_workers} loader workers runs in {n_workers}")
        # The DataLoader always asks worker 0 first; after k batches the next one belongs to logical worker k % W.
        worker = (worker + self.start_batches) % n_workers
        slot, n_slots = self.rank * n_workers + worker, self.world_size * n_workers
        batch_no = batches_of_worker(self.start_batches, worker, n_workers)
        size = self.cfg.optim.batch_size
        samples = self.slot_samples(slot, n_slots, skip=batch_no * size)
        while True:
            crops, ids = [], []
            for epoch, sid, where, data in islice(samples, size):
                with torch.random.fork_rng(devices=[]):  # seeded per sample, without touching the caller's RNG
                    torch.manual_seed(derive_seed(self.cfg.seed, epoch, sid))
                    crops.append(self.augment(decode_image(data, where)))
                ids.append(sid)
            generator = torch.Generator().manual_seed(derive_seed(self.cfg.seed, slot, batch_no, 2))
            batch = MultiCropCollate(self.cfg.masking, self.cfg.model.patch_size, generator)(crops)
            batch["ids"] = torch.tensor(ids, dtype=torch.int64)
            batch_no += 1
            yield batch


def build_loader(index: ShardIndex, cfg: TrainConfig, rank: int = 0, world_size: int = 1, start_batches: int = 0,
                 storage_options: dict[str, Any] | None = None) -> DataLoader:
    """The DataLoader of one rank: ``cfg.loader_workers`` processes, each yielding whole batches; pinned host memory
    on a CUDA machine, so the copy to the GPU is a direct DMA that a ``non_blocking`` copy overlaps with the step."""
    stream = ShardStream(index, cfg, rank, world_size, start_batches, storage_options)
    workers = cfg.loader_workers
    return DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None,
                      pin_memory=torch.cuda.is_available())


def write_shards(records: Iterable[tuple[str, bytes, str]], out_dir: str, shard_size: int = 1000,
                 storage_options: dict[str, Any] | None = None) -> pa.Table:
    """Write ``(key, image bytes, caption)`` records as img2dataset-style shards ``00000.tar``, ... under ``out_dir``.

    For tests and benchmarks (real data comes from img2dataset + dedup). Returns the manifest table, every row kept.
    """
    fs, base = fsspec.core.url_to_fs(out_dir, **(storage_options or {}))
    fs.makedirs(base, exist_ok=True)
    rows: dict[str, list[Any]] = {c: [] for c in MANIFEST_COLUMNS}
    records = iter(records)
    for n in range(1 << 31):
        chunk = list(islice(records, shard_size))
        if not chunk:
            break
        path = f"{base}/{n:05d}.tar"
        uri = fs.unstrip_protocol(path) if fs.protocol not in ("file", ("file", "local")) else path
        with fs.open(path, "wb") as f, TarWriter(f, encoder=False, mtime=0) as writer:
            for key, data, caption in chunk:
                meta = {"key": key, "caption": caption, "status": "success"}
                writer.write({"__key__": key, "jpg": data, "txt": caption.encode(), "json": json.dumps(meta).encode()})
                values = (key, uri, key, hashlib.sha256(data).hexdigest(), "", caption, "", True, "")
                for col, value in zip(MANIFEST_COLUMNS, values):
                    rows[col].append(value)
    return pa.table(rows)


def write_manifest(table: pa.Table, uri: str, storage_options: dict[str, Any] | None = None) -> str:
    """Write a manifest table to ``uri`` (Parquet); returns ``uri``."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    with fs.open(path, "wb") as f:
        pq.write_table(table, f)
    return uri

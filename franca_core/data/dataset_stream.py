"""Resumable multi-crop batches of one rank over a map-style image dataset (the Ray Train loop's other source).

The counterpart of ``shards.ShardStream`` for an in-memory or on-disk map-style set (``highres.dataset``: Parquet or
ImageFolder), with the same contract, so the training loop treats both alike: endless whole batches
``{global_crops, local_crops, masks, ids}``, an order that is a pure function of (set size, seed, world size, loader
workers, batch size), and a restart that continues it from the number of batches the rank consumed.

- epoch ``e`` permutes the set with a seed derived from ``(seed, e)``; the ``S = world_size * loader_workers`` slots
  take every S-th sample of it (slot ``s`` reads positions ``s, s+S, ...``);
- each slot streams epoch after epoch without end and yields whole batches; the DataLoader interleaves its workers
  round-robin, so batch ``j`` of a rank is worker ``j % W``'s (``shards.batches_of_worker``);
- augmentation is seeded per (seed, epoch, sample) and masks per (seed, slot, batch), as in ``ShardStream``.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from franca_core.config import TrainConfig
from franca_core.data.collate import MultiCropCollate
from franca_core.data.multicrop import MultiCropAugmentation
from franca_core.data.shards import batches_of_worker, derive_seed


class DatasetStream(IterableDataset):
    """Endless multi-crop batches of one rank over ``dataset`` (items ``(PIL image, ...)`` or PIL images).

    Args:
        dataset: the images; ``ids`` of a batch are indices into it.
        cfg: the ``train`` section (crops, masking, patch size, batch size, loader workers, seed).
        rank: this rank's index; ``world_size``: number of ranks.
        start_batches: batches this rank already consumed (the checkpointed data position).
    """

    def __init__(self, dataset: Dataset, cfg: TrainConfig, rank: int = 0, world_size: int = 1,
                 start_batches: int = 0) -> None:
        super().__init__()
        self.n = len(dataset)  # type: ignore[arg-type]
        n_slots = world_size * max(cfg.loader_workers, 1)
        if self.n < n_slots:
            raise ValueError(f"{self.n} images cannot feed {n_slots} loader slots ({world_size} ranks x "
                             f"{cfg.loader_workers} workers)")
        self.dataset, self.cfg, self.rank, self.world_size = dataset, cfg, rank, world_size
        self.start_batches = start_batches
        self.augment = MultiCropAugmentation(cfg.crops)

    def slot_samples(self, slot: int, n_slots: int, skip: int = 0) -> Iterator[tuple[int, int]]:
        """``(epoch, index)`` of one slot, forever, after skipping ``skip`` samples."""
        epoch = 0
        while True:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(derive_seed(self.cfg.seed, epoch)))
            take = order[slot::n_slots].tolist()
            for i in take[skip:]:
                yield epoch, int(i)
            skip = max(skip - len(take), 0)
            epoch += 1

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        worker = (worker + self.start_batches) % n_workers  # the DataLoader asks worker 0 first (as ShardStream)
        slot, n_slots = self.rank * n_workers + worker, self.world_size * n_workers
        batch_no = batches_of_worker(self.start_batches, worker, n_workers)
        size = self.cfg.optim.batch_size
        samples = self.slot_samples(slot, n_slots, skip=batch_no * size)
        while True:
            crops, ids = [], []
            for epoch, i in islice(samples, size):
                item: Any = self.dataset[i]
                with torch.random.fork_rng(devices=[]):  # seeded per sample, without touching the caller's RNG
                    torch.manual_seed(derive_seed(self.cfg.seed, epoch, i))
                    crops.append(self.augment(item[0] if isinstance(item, tuple) else item))
                ids.append(i)
            generator = torch.Generator().manual_seed(derive_seed(self.cfg.seed, slot, batch_no, 2))
            batch = MultiCropCollate(self.cfg.masking, self.cfg.model.patch_size, generator)(crops)
            batch["ids"] = torch.tensor(ids, dtype=torch.int64)
            batch_no += 1
            yield batch


def build_dataset_loader(dataset: Dataset, cfg: TrainConfig, rank: int = 0, world_size: int = 1,
                         start_batches: int = 0) -> DataLoader:
    """The DataLoader of one rank over ``dataset``: ``cfg.loader_workers`` processes, each yielding whole batches;
    pinned host memory on a CUDA machine (a direct copy to the GPU)."""
    stream = DatasetStream(dataset, cfg, rank, world_size, start_batches)
    workers = cfg.loader_workers
    return DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None,
                      pin_memory=torch.cuda.is_available())

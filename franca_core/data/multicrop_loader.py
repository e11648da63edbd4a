"""A multi-crop training DataLoader over any map-style image dataset (plain-loop drivers: high-res, benchmarks).

Reference: ``franca_cli/train.py: pretrain_on_synthetic`` (same pieces) and ``dinov2/train/train.py`` (loader).
Items of ``dataset`` are ``(PIL image, ...)``; the multi-crop transform runs in the loader workers and the
collate builds the crop-major batch with CyclicMask masks (``franca_core.data.collate``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from franca_core.config import TrainConfig
from franca_core.data.collate import MultiCropCollate
from franca_core.data.multicrop import MultiCropAugmentation


class _Augmented(Dataset):
    """``dataset[i][0]`` through the multi-crop augmentation (labels, masks dropped)."""

    def __init__(self, dataset: Dataset, augment: MultiCropAugmentation) -> None:
        self.dataset, self.augment = dataset, augment

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, list[torch.Tensor]]:
        item: Any = self.dataset[i]
        return self.augment(item[0] if isinstance(item, tuple) else item)


def multicrop_loader(cfg: TrainConfig, dataset: Dataset, seed: int | None = None,
                     device: torch.device | str = "cpu") -> DataLoader:
    """Shuffled, drop-last batches of ``cfg.optim.batch_size`` multi-crop samples with masks.

    For a CUDA ``device`` the batches come in pinned (page-locked) host memory, so the copy to the GPU is a direct
    DMA that ``tensor.to(device, non_blocking=True)`` overlaps with the step (``run_steps`` copies that way).
    """
    n = len(dataset)  # type: ignore[arg-type]
    if n < cfg.optim.batch_size:
        raise ValueError(f"training set has {n} images, fewer than one batch of {cfg.optim.batch_size}")
    gen = torch.Generator().manual_seed(cfg.seed if seed is None else seed)
    return DataLoader(
        _Augmented(dataset, MultiCropAugmentation(cfg.crops)), batch_size=cfg.optim.batch_size, shuffle=True,
        drop_last=True, num_workers=cfg.loader_workers, persistent_workers=cfg.loader_workers > 0,
        collate_fn=MultiCropCollate(cfg.masking, cfg.model.patch_size), generator=gen,
        pin_memory=torch.device(device).type == "cuda",
    )

"""Frozen feature extraction: CLS and mean-pooled patch tokens of a backbone over a dataset."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def extract_features(backbone: nn.Module, dataset: Dataset, batch_size: int = 256,
                     num_workers: int = 0) -> dict[str, torch.Tensor]:
    """``{"cls": (n, D), "patch_mean": (n, D), "labels": (n,)}``; ``dataset`` yields (tensor, label)."""
    was_training = backbone.training
    backbone.eval()
    cls, patch_mean, labels = [], [], []
    for images, y in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        out = backbone.forward_masked(images)
        cls.append(out["cls"])
        patch_mean.append(out["patch"].mean(dim=1))
        labels.append(torch.as_tensor(y))
    backbone.train(was_training)
    return {"cls": torch.cat(cls), "patch_mean": torch.cat(patch_mean), "labels": torch.cat(labels)}

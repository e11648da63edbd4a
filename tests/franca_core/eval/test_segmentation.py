"""Overclustering and in-context segmentation on constructed patch features."""

from __future__ import annotations

import torch

from franca_core.eval.incontext import incontext_miou
from franca_core.eval.overcluster import overcluster, overcluster_ks


def _scenes(n: int, seed: int, dim: int = 24, grid: int = 4, up: int = 2):
    """Images whose left/right halves hold two of 3 classes; a patch token = its class centre + noise."""
    g = torch.Generator().manual_seed(seed)
    centres = 3 * torch.randn(3, dim, generator=torch.Generator().manual_seed(99))
    classes = torch.stack([torch.randperm(3, generator=g)[:2] for _ in range(n)])  # (n, 2)
    cells = torch.zeros(n, grid, grid, dtype=torch.long)
    cells[:, :, : grid // 2] = classes[:, :1, None]
    cells[:, :, grid // 2 :] = classes[:, 1:, None]
    patch = centres[cells] + 0.1 * torch.randn(n, grid, grid, dim, generator=g)
    masks = cells.repeat_interleave(up, 1).repeat_interleave(up, 2)
    return patch, masks


def test_overcluster__clustered_features_give_miou_1_for_k_equal_classes() -> None:
    patch, masks = _scenes(30, 0)
    res = overcluster(patch, masks, n_classes=3, ks=overcluster_ks(3, [1, 3]), pca_dim=8)
    assert res["miou"][3] == 1.0
    assert res["miou"][9] == 1.0


def test_overcluster__keeps_class_mapped_predictions_for_figures() -> None:
    patch, masks = _scenes(10, 1)
    res = overcluster(patch, masks, n_classes=3, ks=[3], pca_dim=8, keep=2)
    assert torch.equal(res["predictions"][3], masks[:2])


def test_incontext_miou__memory_bank_of_matching_classes_gives_1() -> None:
    train_patch, train_masks = _scenes(40, 2)
    test_patch, test_masks = _scenes(10, 3)
    res = incontext_miou(train_patch, train_masks, test_patch, test_masks, n_classes=3, k=30, keep=3)
    assert res["miou"] == 1.0
    assert res["predictions"].shape == (3, 8, 8)


def test_incontext_miou__random_bank_labels_score_low() -> None:
    train_patch, _ = _scenes(40, 4)
    random_masks = torch.randint(3, (40, 8, 8), generator=torch.Generator().manual_seed(5))
    test_patch, test_masks = _scenes(10, 6)
    res = incontext_miou(train_patch, random_masks, test_patch, test_masks, n_classes=3)
    assert res["miou"] < 0.5

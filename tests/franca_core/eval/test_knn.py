"""k-NN on constructed features: separable -> 100 %, random labels -> chance."""

from __future__ import annotations

import pytest
import torch

from franca_core.eval.knn import knn_accuracies, knn_top1


def _clusters(n_per: int, n_classes: int, dim: int = 32, noise: float = 0.05, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=g)
    labels = torch.arange(n_classes).repeat_interleave(n_per)
    return centres[labels] + noise * torch.randn(len(labels), dim, generator=g), labels


def test_knn_accuracies__separable_features_give_100_percent_at_every_k() -> None:
    x, y = _clusters(60, 5)
    q, qy = _clusters(20, 5, seed=0)
    acc = knn_accuracies(x, y, q + 0.01, qy, ks=(10, 20, 100, 200))
    assert acc == {10: 1.0, 20: 1.0, 100: 1.0, 200: 1.0}


def test_knn_accuracies__random_labels_give_chance() -> None:
    g = torch.Generator().manual_seed(1)
    x, q = torch.randn(2000, 16, generator=g), torch.randn(2000, 16, generator=g)
    y, qy = torch.randint(4, (2000,), generator=g), torch.randint(4, (2000,), generator=g)
    acc = knn_accuracies(x, y, q, qy, ks=(10, 20, 100, 200))
    assert all(abs(a - 0.25) < 0.05 for a in acc.values()), acc


def test_knn_accuracies__k20_matches_knn_top1() -> None:
    g = torch.Generator().manual_seed(2)
    x, q = torch.randn(300, 8, generator=g), torch.randn(100, 8, generator=g)
    y, qy = torch.randint(3, (300,), generator=g), torch.randint(3, (100,), generator=g)
    assert knn_accuracies(x, y, q, qy, ks=(20,))[20] == pytest.approx(knn_top1(x, y, q, qy, k=20))


def test_knn_accuracies__missing_labels_raise_naming_the_cause() -> None:
    x = torch.randn(10, 4)
    y = torch.full((10,), -1)
    try:
        knn_accuracies(x, y, x, y)
    except ValueError as exc:
        assert "label" in str(exc)
    else:
        raise AssertionError("no error for label -1")

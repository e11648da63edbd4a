"""Matryoshka truncation table on constructed features."""

from __future__ import annotations

import pytest
import torch

from franca_core.eval.matryoshka import matryoshka_dims, truncation_table


def test_matryoshka_dims__nested_levels_plus_d32_d64() -> None:
    assert matryoshka_dims(192, 5) == [3, 6, 12, 24, 48, 96, 192]
    assert matryoshka_dims(768, 5) == [12, 24, 48, 96, 192, 384, 768]


def test_truncation_table__information_in_the_prefix_survives_truncation() -> None:
    # The class lives in the first 4 dimensions, the other 28 are noise of the same scale: z[:4] is perfect,
    # and PCA-to-4 (which picks the highest-variance directions, here the class centres) is too.
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat(60)
    centres = 4 * torch.eye(4)
    x = torch.cat([centres[y], torch.randn(240, 28, generator=g)], dim=1) + 0.1 * torch.randn(240, 32, generator=g)
    q = torch.cat([centres[y], torch.randn(240, 28, generator=g)], dim=1) + 0.1 * torch.randn(240, 32, generator=g)
    table = truncation_table(x, y, q, y, dims=[4, 32])
    assert table["knn"][4] == 1.0 and table["linear"][4] == 1.0
    assert table["pca_knn"][4] == 1.0
    assert set(table) == {"knn", "pca_knn", "linear", "pca_linear"}


def test_truncation_table__information_outside_the_prefix_is_lost() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.arange(4).repeat(100)
    x = torch.cat([torch.randn(400, 4, generator=g), 4 * torch.eye(4)[y]], dim=1)
    q = torch.cat([torch.randn(400, 4, generator=g), 4 * torch.eye(4)[y]], dim=1)
    table = truncation_table(x, y, q, y, dims=[4, 8], linear=False)
    assert abs(table["knn"][4] - 0.25) < 0.08 and table["knn"][8] == 1.0


def test_truncation_table__dimension_out_of_range_raises() -> None:
    x, y = torch.randn(10, 8), torch.arange(10) % 2
    with pytest.raises(ValueError, match="outside"):
        truncation_table(x, y, x, y, dims=[16])

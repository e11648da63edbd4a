"""Linear probe on constructed features."""

from __future__ import annotations

import pytest
import torch

from franca_core.eval.linear import linear_probe


def test_linear_probe__separable_features_give_100_percent() -> None:
    g = torch.Generator().manual_seed(0)
    centres = 5 * torch.randn(4, 16, generator=g)
    y = torch.arange(4).repeat(50)
    x = centres[y] + 0.1 * torch.randn(200, 16, generator=g)
    q = centres[y] + 0.1 * torch.randn(200, 16, generator=g)
    assert linear_probe(x, y, q, y) == 1.0


def test_linear_probe__random_labels_give_chance() -> None:
    g = torch.Generator().manual_seed(1)
    x, q = torch.randn(1500, 8, generator=g), torch.randn(1500, 8, generator=g)
    y, qy = torch.randint(3, (1500,), generator=g), torch.randint(3, (1500,), generator=g)
    assert abs(linear_probe(x, y, q, qy) - 1 / 3) < 0.05


def test_linear_probe__single_class_raises() -> None:
    x = torch.randn(10, 4)
    with pytest.raises(ValueError, match="two classes"):
        linear_probe(x, torch.zeros(10, dtype=torch.long), x, torch.zeros(10, dtype=torch.long))

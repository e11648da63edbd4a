"""OOD detection on constructed features."""

from __future__ import annotations

import pytest
import torch

from franca_core.eval.ood import ood_detection, ood_metrics


def test_ood_detection__separable_sets_give_auroc_1_and_fpr95_0() -> None:
    g = torch.Generator().manual_seed(0)
    direction = torch.zeros(16)
    direction[0] = 1
    bank = direction + 0.05 * torch.randn(200, 16, generator=g)
    inside = direction + 0.05 * torch.randn(100, 16, generator=g)
    outside = -direction + 0.05 * torch.randn(100, 16, generator=g)
    res = ood_detection(bank, inside, outside, k=10)
    assert res == {"auroc": 1.0, "fpr95": 0.0}


def test_ood_detection__same_distribution_gives_auroc_near_half() -> None:
    g = torch.Generator().manual_seed(1)
    bank, a, b = (torch.randn(n, 16, generator=g) for n in (1000, 1000, 1000))
    res = ood_detection(bank, a, b)
    assert abs(res["auroc"] - 0.5) < 0.05 and 0.85 < res["fpr95"] <= 1.0


def test_ood_metrics__fpr95_counts_ood_above_the_95_percent_threshold() -> None:
    inside = torch.arange(100, dtype=torch.float32)  # threshold keeping 95 % of these: score >= 5
    outside = torch.tensor([10.0, 2.0, 1.0, 0.0])  # one of four above it
    assert ood_metrics(inside, outside)["fpr95"] == pytest.approx(0.25)

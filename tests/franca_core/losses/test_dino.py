from __future__ import annotations

import pytest
import torch

from franca_core.losses.dino import dino_loss, n_dino_pairs


@pytest.mark.parametrize(("n_global", "n_local", "pairs"), [(2, 8, 18), (2, 0, 2), (2, 4, 10), (3, 2, 12)])
def test_n_dino_pairs__counts(n_global: int, n_local: int, pairs: int) -> None:
    assert n_dino_pairs(n_global, n_local) == pairs


def test_dino_loss__averages_over_18_pairs() -> None:
    g = torch.Generator().manual_seed(0)
    batch, k, temp = 4, 10, 0.1
    sg, sl = torch.randn(2 * batch, k, generator=g), torch.randn(8 * batch, k, generator=g)
    t = torch.softmax(torch.randn(2 * batch, k, generator=g), dim=-1)
    expected, pairs = 0.0, 0
    log = lambda x: torch.log_softmax(x / temp, dim=-1)  # noqa: E731
    for ti in range(2):
        tt = t[ti * batch : (ti + 1) * batch]
        for si in range(2):
            if si != ti:
                expected -= (tt * log(sg[si * batch : (si + 1) * batch])).sum(-1).mean().item()
                pairs += 1
        for li in range(8):
            expected -= (tt * log(sl[li * batch : (li + 1) * batch])).sum(-1).mean().item()
            pairs += 1
    assert pairs == 18
    assert dino_loss(sg, sl, t, n_global=2, student_temp=temp).item() == pytest.approx(expected / 18, rel=1e-5)

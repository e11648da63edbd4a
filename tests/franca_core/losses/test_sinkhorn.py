from __future__ import annotations

import torch

from franca_core.losses.sinkhorn import sinkhorn_knopp


def _reference_sinkhorn(logits: torch.Tensor, temp: float, n_iter: int) -> torch.Tensor:
    """float64 reference written from FRANCA_METHOD.md: global max, then alternate row / column normalisation."""
    x = logits.double()
    q = torch.exp((x - x.max()) / temp).t()
    k, n = q.shape
    q = q / q.sum()
    for _ in range(n_iter):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / n
    return (q * n).t()


def test_sinkhorn_knopp__rows_sum_to_one() -> None:
    logits = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    q = sinkhorn_knopp(logits, temperature=0.05)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(64), atol=1e-5, rtol=0)


def test_sinkhorn_knopp__prototype_marginals_near_uniform() -> None:
    logits = torch.randn(512, 16, generator=torch.Generator().manual_seed(1)) * 0.1
    q = sinkhorn_knopp(logits, temperature=0.07)
    marginals = q.sum(dim=0) / q.sum()
    assert (marginals - 1 / 16).abs().max() < 0.2 / 16, marginals


def test_sinkhorn_knopp__invariant_to_global_shift() -> None:
    logits = torch.randn(32, 20, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(sinkhorn_knopp(logits, 0.04), sinkhorn_knopp(logits + 7.5, 0.04), atol=1e-6, rtol=1e-5)


def test_sinkhorn_knopp__matches_float64_reference() -> None:
    # Teacher logits are cosine similarities (unit prototypes, L2-normalised input): values in [-1, 1].
    logits = torch.rand(48, 24, generator=torch.Generator().manual_seed(3)) * 2 - 1
    for temp in (0.04, 0.07):
        ref = _reference_sinkhorn(logits, temp, 3).float()
        torch.testing.assert_close(sinkhorn_knopp(logits, temp, 3), ref, atol=1e-5, rtol=1e-4)


def test_sinkhorn_knopp__per_sample_shift_changes_result() -> None:
    # Why the global max matters: a per-sample shift is not a no-op with 3 iterations.
    logits = torch.randn(16, 8, generator=torch.Generator().manual_seed(4))
    shifted = logits + torch.arange(16.0).unsqueeze(1)
    assert not torch.allclose(sinkhorn_knopp(logits, 0.1), sinkhorn_knopp(shifted, 0.1), atol=1e-3)

"""Collapse monitors: RankMe on matrices of known rank, view retrieval on separable and collapsed embeddings."""

from __future__ import annotations

import pytest
import torch

from franca_core.config import load_config
from franca_core.models.backbone import build_backbone
from franca_core.train.monitors import collapse_monitors, rankme, view_retrieval_top1


@pytest.mark.parametrize("k", [1, 3, 10])
def test_rankme__a_rank_k_matrix_with_equal_singular_values_scores_k(k: int) -> None:
    q, _ = torch.linalg.qr(torch.randn(64, k, dtype=torch.float64))  # (64, k), orthonormal columns
    v, _ = torch.linalg.qr(torch.randn(32, k, dtype=torch.float64))
    assert rankme(q @ v.T) == pytest.approx(k, rel=1e-3)


def test_rankme__collapsed_embeddings_score_about_one_and_random_ones_near_full_rank() -> None:
    g = torch.Generator().manual_seed(0)
    one = torch.randn(1, 48, generator=g)
    collapsed = one.expand(128, 48) + 1e-4 * torch.randn(128, 48, generator=g)
    assert rankme(collapsed) < 1.1
    assert rankme(torch.randn(128, 48, generator=g)) > 0.8 * 48


def test_rankme__rejects_an_empty_matrix() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        rankme(torch.zeros(0, 8))


def test_view_retrieval__finds_the_other_view_and_falls_to_one_hit_when_collapsed() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(20, 16, generator=g)
    views = torch.stack([images + 0.05 * torch.randn(20, 16, generator=g) for _ in range(2)])
    assert view_retrieval_top1(views) == 1.0
    collapsed = torch.ones(2, 20, 16)  # every similarity ties: argmax picks bank item 0 for every query
    assert view_retrieval_top1(collapsed) == pytest.approx(1 / 20)
    with pytest.raises(ValueError, match="2, N >= 2"):
        view_retrieval_top1(torch.ones(3, 20, 16))


def test_collapse_monitors__on_the_tiny_backbone() -> None:
    cfg = load_config("tiny").train
    torch.manual_seed(0)
    backbone = build_backbone(cfg.model, drop_path=0.0).eval()
    size = cfg.crops.global_size
    out = collapse_monitors(backbone, torch.randn(2 * 6, 3, size, size), chunk=5)
    assert set(out) == {"rankme", "rankme_max", "knn_view_top1", "knn_view_chance"}
    assert 1.0 <= out["rankme"] <= out["rankme_max"] == 12 and out["knn_view_chance"] == pytest.approx(1 / 6)
    assert 0.0 <= out["knn_view_top1"] <= 1.0
    with pytest.raises(ValueError, match="two views"):
        collapse_monitors(backbone, torch.randn(3, 3, size, size))

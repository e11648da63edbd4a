"""Confusion, mIoU and cluster matching on constructed label maps."""

from __future__ import annotations

import pytest
import torch

from franca_core.eval.miou import cluster_miou, confusion, miou


def _truth(seed: int = 0) -> torch.Tensor:
    return torch.randint(4, (6, 10, 10), generator=torch.Generator().manual_seed(seed))


def test_cluster_miou__hungarian_on_a_permuted_perfect_clustering_gives_1() -> None:
    truth = _truth()
    perm = torch.tensor([2, 0, 3, 1])
    conf = confusion(perm[truth], truth, 4, 4)
    value, mapping = cluster_miou(conf)
    assert value == 1.0
    assert mapping[perm].tolist() == [0, 1, 2, 3]


def test_cluster_miou__greedy_many_to_one_on_split_clusters_gives_1() -> None:
    # Each class split into 3 clusters (12 clusters for 4 classes): many-to-one matching undoes the split.
    truth = _truth(1)
    split = torch.randint(3, truth.shape, generator=torch.Generator().manual_seed(2))
    clusters = truth * 3 + split
    value, mapping = cluster_miou(confusion(clusters, truth, 12, 4))
    assert value == 1.0 and sorted(set(mapping.tolist())) == [0, 1, 2, 3]


def test_cluster_miou__random_clusters_score_low() -> None:
    truth = _truth(3)
    clusters = torch.randint(4, truth.shape, generator=torch.Generator().manual_seed(4))
    value, _ = cluster_miou(confusion(clusters, truth, 4, 4))
    assert value < 0.25


def test_confusion__ignored_pixels_do_not_count() -> None:
    truth = torch.tensor([[0, 1, 255]])
    pred = torch.tensor([[0, 1, 0]])
    conf = confusion(pred, truth, 2, 2)
    assert conf.sum() == 2 and miou(conf) == 1.0


def test_confusion__class_outside_range_raises() -> None:
    with pytest.raises(ValueError, match="outside"):
        confusion(torch.zeros(1, 3, dtype=torch.long), torch.tensor([[0, 1, 7]]), 2, 2)


def test_miou__unmatched_cluster_counts_as_false_negative() -> None:
    # 3 clusters, 2 classes, one-to-one: the third cluster's pixels are lost to their true class.
    truth = torch.tensor([[0, 0, 1, 1]])
    clusters = torch.tensor([[0, 2, 1, 1]])
    value, mapping = cluster_miou(confusion(clusters, truth, 3, 2), many_to_one=False)
    assert mapping[2] == -1
    assert value == pytest.approx((0.5 + 1.0) / 2)

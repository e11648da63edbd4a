"""Weighted k-NN classification on frozen features (DINO's protocol).

Reference: ``dino/eval_knn.py: knn_classifier`` and ``dinov2/eval/knn.py``. Features are L2-normalised; each test
sample takes its k most cosine-similar training samples, weights each by exp(similarity / T) and predicts the class
with the largest summed weight. Defaults: k=20, T=0.07; ``knn_accuracies`` scores k = 10/20/100/200 at once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                k: int = 20, temperature: float = 0.07, n_classes: int | None = None,
                chunk: int = 1024) -> torch.Tensor:
    """Predicted labels (n_test,) from (n_train, D) / (n_test, D) features and (n_train,) int labels."""
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError("k-NN needs a non-empty bank and query set")
    n_classes = int(train_labels.max()) + 1 if n_classes is None else n_classes
    bank = F.normalize(train_features.float(), dim=-1)
    k = min(k, bank.shape[0])
    preds = []
    for start in range(0, test_features.shape[0], chunk):
        q = F.normalize(test_features[start : start + chunk].float(), dim=-1)
        sims, idx = (q @ bank.t()).topk(k, dim=-1)
        weights = (sims / temperature).exp()
        votes = torch.zeros(q.shape[0], n_classes).scatter_add_(1, train_labels[idx].long(), weights)
        preds.append(votes.argmax(dim=-1))
    return torch.cat(preds)


def knn_top1(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
             test_labels: torch.Tensor, k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 accuracy in [0, 1] of ``knn_predict``."""
    n_classes = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    preds = knn_predict(train_features, train_labels, test_features, k, temperature, n_classes)
    return float((preds == test_labels.long()).float().mean())


@torch.no_grad()
def knn_accuracies(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                   test_labels: torch.Tensor, ks: Sequence[int] = (10, 20, 100, 200), temperature: float = 0.07,
                   chunk: int = 1024) -> dict[int, float]:
    """Top-1 accuracy in [0, 1] for every k in ``ks`` from one top-max(k) search (same votes as ``knn_predict``).

    Args:
        train_features: (n_train, D) bank; test_features: (n_test, D) queries; labels int (n,).
        ks: neighbour counts; a k above the bank size uses the whole bank.
    """
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError("k-NN needs a non-empty bank and query set")
    if (train_labels < 0).any() or (test_labels < 0).any():
        raise ValueError("k-NN needs an image-level label for every image (found label -1)")
    n_classes = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    bank = F.normalize(train_features.float(), dim=-1)
    k_max = min(max(ks), bank.shape[0])
    correct = {k: 0 for k in ks}
    for start in range(0, test_features.shape[0], chunk):
        q = F.normalize(test_features[start : start + chunk].float(), dim=-1)
        y = test_labels[start : start + chunk].long()
        sims, idx = (q @ bank.t()).topk(k_max, dim=-1)  # sorted: the first k columns are the k nearest
        weights, neighbour_labels = (sims / temperature).exp(), train_labels[idx].long()
        for k in ks:
            kk = min(k, k_max)
            votes = torch.zeros(q.shape[0], n_classes).scatter_add_(1, neighbour_labels[:, :kk], weights[:, :kk])
            correct[k] += int((votes.argmax(dim=-1) == y).sum())
    return {k: correct[k] / test_features.shape[0] for k in ks}

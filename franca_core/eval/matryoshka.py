"""Matryoshka truncation table: k-NN and linear accuracy using only the first d feature dimensions.

Reference: Franca (arXiv 2507.14137), the Matryoshka figure (accuracy vs dimension, down to D/64, against a
PCA baseline) and Kusupati et al., "Matryoshka Representation Learning" (arXiv 2205.13147). Franca's heads train
the nested prefixes z[:d_i], d_i = D/16 ... D, so z[:d] should hold up well against PCA-to-d of the same features;
D/32 and D/64 are below the smallest trained level and show how the nesting extrapolates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from franca_core.eval.knn import knn_accuracies
from franca_core.eval.linear import linear_probe
from franca_core.eval.overcluster import pca_basis


def matryoshka_dims(embed_dim: int, n_levels: int = 5) -> list[int]:
    """D/64, D/32 and the trained nested levels D/2**(n_levels-1) ... D, ascending, each at least 1."""
    dims = {embed_dim // 64, embed_dim // 32} | {embed_dim // 2**i for i in range(n_levels)}
    return sorted(d for d in dims if d >= 1)


def pca_project(train: torch.Tensor, test: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets projected on the top-d principal directions of ``train`` (centred with the train mean)."""
    mean, basis = pca_basis(train.float(), d)
    return (train.float() - mean) @ basis, (test.float() - mean) @ basis


def truncation_table(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                     test_labels: torch.Tensor, dims: Sequence[int], knn_k: int = 20, temperature: float = 0.07,
                     linear: bool = True, linear_c: float = 1.0, linear_max_iter: int = 200,
                     seed: int = 0) -> dict[str, dict[int, float]]:
    """Accuracy at each d for ``z[:d]`` and for PCA-to-d.

    Returns:
        ``{"knn": {d: acc}, "pca_knn": {...}}`` and, with ``linear``, ``"linear"`` / ``"pca_linear"``;
        accuracies are top-1 in [0, 1]; features are (n, D).
    """
    embed_dim = train_features.shape[1]
    bad = [d for d in dims if not 1 <= d <= embed_dim]
    if bad:
        raise ValueError(f"Matryoshka dimensions {bad} are outside [1, {embed_dim}]")
    table: dict[str, dict[int, float]] = {"knn": {}, "pca_knn": {}}
    if linear:
        table.update(linear={}, pca_linear={})
    for d in dims:
        variants = {"": (train_features[:, :d], test_features[:, :d]),
                    "pca_": pca_project(train_features, test_features, d)}
        for prefix, (tr, te) in variants.items():
            table[f"{prefix}knn"][d] = knn_accuracies(tr, train_labels, te, test_labels, [knn_k], temperature)[knn_k]
            if linear:
                table[f"{prefix}linear"][d] = linear_probe(tr, train_labels, te, test_labels, linear_c,
                                                           linear_max_iter, seed)
    return table

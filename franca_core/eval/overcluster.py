"""Overclustering (unsupervised semantic segmentation) of frozen patch tokens, scored by mIoU.

Reference: Leopart (arXiv 2204.13101) and ``valeoai/Franca: rasa/experiments/utils.py: PredsmIoUKmeans``; Franca
(arXiv 2507.14137) "Overclustering". Patch tokens are reduced with PCA to ``pca_dim``, clustered with k-means
(K = classes, and K = 3x / 10x classes), upsampled (bilinear, in PCA space) to the mask grid, assigned to the
nearest centroid per pixel, and the clusters matched to classes (Hungarian for K = classes, greedy many-to-one
above) before mIoU.

CPU budget: PCA and k-means are FITTED on a random subsample of patch-level tokens (``max_tokens``) instead of all
upsampled pixels; every pixel of every image is still assigned and counted. Centroids of bilinearly upsampled
features lie in the span of the patch-level ones, so the subsample changes the fit little and the cost a lot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from franca_core.eval.miou import cluster_miou, confusion


def pca_basis(tokens: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and top-``dim`` principal directions (D, dim) of (n, D) tokens.

    Eigenvectors of the (D, D) covariance in float64: the same directions as an SVD of the (n, D) data, at a
    fraction of the cost for n >> D.
    """
    mean = tokens.mean(dim=0)
    centred = (tokens - mean).double()
    _, vecs = torch.linalg.eigh(centred.t() @ centred)  # ascending eigenvalues
    return mean, vecs.flip(1)[:, : min(dim, vecs.shape[1])].float()


def upsampled_assign(patch: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor, centroids: torch.Tensor,
                     size: tuple[int, int], batch: int = 32) -> torch.Tensor:
    """Per-pixel nearest centroid (n, gh, gw) of (n, h, w, D) tokens upsampled in PCA space to ``size``."""
    out = []
    for start in range(0, patch.shape[0], batch):
        z = (patch[start : start + batch].float() - mean) @ basis  # (b, h, w, p)
        z = F.interpolate(z.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
        z = z.permute(0, 2, 3, 1)  # (b, gh, gw, p)
        # argmin_c |z - c|^2 = argmin_c (|c|^2 - 2 z.c): one matmul (several times faster than cdist here)
        scores = (centroids * centroids).sum(1) - 2 * z.reshape(-1, z.shape[-1]) @ centroids.t()
        out.append(scores.argmin(dim=1).reshape(z.shape[:3]))
    return torch.cat(out)


def overcluster(patch: torch.Tensor, masks: torch.Tensor, n_classes: int, ks: Sequence[int],
                ignore_index: int = 255, pca_dim: int = 50, max_tokens: int = 50_000, seed: int = 0,
                n_init: int = 3, keep: int = 0) -> dict[str, Any]:
    """mIoU of K-means clusterings of the patch tokens against the masks.

    Args:
        patch: (n, h, w, D) patch tokens (float16 or float32).
        masks: (n, gh, gw) integer class maps on the evaluation grid; ``ignore_index`` pixels are skipped.
        n_classes: number of mask classes (K = ``n_classes`` uses Hungarian matching).
        ks: cluster counts.
        keep: also return the class-mapped predictions of the first ``keep`` images (for figures).

    Returns:
        ``{"miou": {K: value}, "predictions": {K: (keep, gh, gw) int64}}``.
    """
    if patch.shape[0] == 0:
        raise ValueError("overclustering needs at least one image")
    if masks.ndim != 3 or masks.shape[0] != patch.shape[0]:
        raise ValueError(f"overclustering needs one mask per image: {tuple(masks.shape)} for {patch.shape[0]} images")
    if n_classes < 1:
        raise ValueError("overclustering needs at least one mask class")
    gen = torch.Generator().manual_seed(seed)
    flat = patch.reshape(-1, patch.shape[-1])
    sample = flat[torch.randperm(flat.shape[0], generator=gen)[:max_tokens]].float()
    mean, basis = pca_basis(sample, pca_dim)
    z = ((sample - mean) @ basis).numpy()
    results: dict[int, float] = {}
    predictions: dict[int, torch.Tensor] = {}
    for k in ks:
        k_eff = min(k, z.shape[0])
        with threadpool_limits(1):  # small fit: threads cost more than they give (see eval/linear.py)
            km = KMeans(n_clusters=k_eff, n_init=n_init, random_state=seed).fit(z)
        centroids = torch.from_numpy(km.cluster_centers_).float()
        assigned = upsampled_assign(patch, mean, basis, centroids, (masks.shape[1], masks.shape[2]))
        conf = confusion(assigned, masks, k_eff, n_classes, ignore_index)
        value, mapping = cluster_miou(conf, many_to_one=k_eff > n_classes)
        results[k] = value
        if keep:
            predictions[k] = torch.from_numpy(mapping)[assigned[:keep]]
    return {"miou": results, "predictions": predictions}


def overcluster_ks(n_classes: int, factors: Sequence[int]) -> list[int]:
    """K for each factor (1 = Hungarian one-to-one, >1 greedy many-to-one), unique, ascending."""
    return sorted({max(1, f * n_classes) for f in factors})

"""Collapse monitors of a training run, computed on the teacher's CLS embeddings of a fixed batch.

- **RankMe** (Garrido et al., "RankMe: Assessing the downstream performance of pretrained self-supervised
  representations by their rank", arXiv 2210.02885, eq. 1): ``exp(H(p))`` with ``p = sigma / ||sigma||_1 + eps``
  over the singular values ``sigma`` of the (N, D) embedding matrix. A rank-k matrix scores ~k; fully collapsed
  embeddings (every row the same) score ~1. Its maximum is ``min(N, D)``.
- **View retrieval top-1**: pretraining data carry no labels, so the online k-NN uses the one label a multi-crop
  batch has: which image a crop came from. Global crop 0 of every image forms the bank, global crop 1 the queries;
  a query counts as correct when its nearest bank embedding (cosine, k = 1) is the other view of its own image.
  Chance is ``1 / N``; collapsed embeddings fall to chance, a working invariance objective climbs towards 1.

Both run under ``torch.no_grad`` in the trainer's autocast; nothing here changes the training state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from franca_core.models.backbone import FrancaViT

EPS = 1e-7  # RankMe's epsilon: keeps log(p) finite for zero singular values


def rankme(embeddings: torch.Tensor) -> float:
    """RankMe of ``embeddings`` (N, D): exp of the entropy of the L1-normalised singular values."""
    if embeddings.ndim != 2 or min(embeddings.shape) == 0:
        raise ValueError(f"rankme needs a non-empty (N, D) matrix, got shape {tuple(embeddings.shape)}")
    sigma = torch.linalg.svdvals(embeddings.detach().double())
    p = sigma / sigma.sum().clamp_min(EPS) + EPS
    return float(torch.exp(-(p * p.log()).sum()))


def view_retrieval_top1(views: torch.Tensor) -> float:
    """Top-1 retrieval of the other view: ``views`` (2, N, D), view 0 of image i the bank, view 1 the queries."""
    if views.ndim != 3 or views.shape[0] != 2 or views.shape[1] < 2:
        raise ValueError(f"view retrieval needs (2, N >= 2, D) embeddings, got shape {tuple(views.shape)}")
    bank, queries = (F.normalize(v.detach().float(), dim=-1) for v in views)
    nearest = (queries @ bank.T).argmax(dim=1)
    return float((nearest == torch.arange(len(queries), device=nearest.device)).float().mean())


@torch.no_grad()
def cls_embeddings(backbone: FrancaViT, images: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """CLS embeddings (N, D) of ``images`` (N, 3, H, W) through ``backbone.forward_masked``, ``chunk`` at a time."""
    device = next(backbone.parameters()).device
    return torch.cat([backbone.forward_masked(part.to(device))["cls"].float() for part in images.split(chunk)])


def collapse_monitors(backbone: FrancaViT, global_crops: torch.Tensor, chunk: int = 64) -> dict[str, float]:
    """RankMe and view retrieval of ``backbone`` on a crop-major batch of two global crops per image (2N, 3, H, W).

    Returns ``rankme`` (over the N view-0 embeddings and the N view-1 embeddings together), ``rankme_max`` (its
    ceiling, ``min(2N, D)``), ``knn_view_top1`` and ``knn_view_chance`` (``1 / N``).
    """
    if global_crops.shape[0] % 2:
        raise ValueError(f"global crops must hold two views per image, got {global_crops.shape[0]} crops")
    cls = cls_embeddings(backbone, global_crops, chunk)
    n = cls.shape[0] // 2
    return {"rankme": rankme(cls), "rankme_max": float(min(cls.shape)),
            "knn_view_top1": view_retrieval_top1(cls.view(2, n, -1)), "knn_view_chance": 1.0 / n}

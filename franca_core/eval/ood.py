"""Out-of-distribution detection with a k-NN cosine score on frozen features.

Reference: Sun et al., "Out-of-Distribution Detection with Deep Nearest Neighbors" (arXiv 2204.06507): features
L2-normalised, the score of a query is its cosine similarity to its k-th nearest in-distribution training
feature (higher = more in-distribution; the OOD score is its negative). In-distribution is the positive class:
AUROC over (in, out) queries, and FPR at 95% TPR (the fraction of OOD queries accepted at the threshold that
keeps 95% of the in-distribution ones), both with scikit-learn's ``roc_curve``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score, roc_curve


@torch.no_grad()
def knn_scores(bank: torch.Tensor, queries: torch.Tensor, k: int = 10, chunk: int = 1024) -> torch.Tensor:
    """(n_queries,) cosine similarity to the k-th nearest of the (n_bank, D) bank."""
    if bank.shape[0] == 0 or queries.shape[0] == 0:
        raise ValueError("OOD scoring needs a non-empty bank and query set")
    bank = F.normalize(bank.float(), dim=-1)
    k = min(k, bank.shape[0])
    out = [(F.normalize(queries[s : s + chunk].float(), dim=-1) @ bank.t()).topk(k, dim=-1).values[:, -1]
           for s in range(0, queries.shape[0], chunk)]
    return torch.cat(out)


def ood_metrics(in_scores: torch.Tensor, out_scores: torch.Tensor) -> dict[str, float]:
    """``{"auroc", "fpr95"}`` with in-distribution as positives and higher score = more in-distribution."""
    if in_scores.numel() == 0 or out_scores.numel() == 0:
        raise ValueError("OOD metrics need both in-distribution and out-of-distribution queries")
    y = np.concatenate([np.ones(in_scores.numel()), np.zeros(out_scores.numel())])
    s = np.concatenate([in_scores.double().numpy(), out_scores.double().numpy()])
    fpr, tpr, _ = roc_curve(y, s)
    return {"auroc": float(roc_auc_score(y, s)), "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")])}


def ood_detection(bank: torch.Tensor, in_queries: torch.Tensor, out_queries: torch.Tensor,
                  k: int = 10) -> dict[str, float]:
    """k-NN OOD detection: AUROC and FPR@95TPR of (n_in, D) vs (n_out, D) queries against a (n_bank, D) bank."""
    return ood_metrics(knn_scores(bank, in_queries, k), knn_scores(bank, out_queries, k))

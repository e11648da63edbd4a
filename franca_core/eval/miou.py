"""Confusion matrices, mIoU and cluster-to-class matching for unsupervised segmentation.

Reference: Leopart (Ziegler & Asano, arXiv 2204.13101) ``PredsmIoUKmeans`` as reused by ``valeoai/Franca:
rasa/experiments/utils.py``: with K = classes, clusters are matched one-to-one to classes by the Hungarian
algorithm (scipy ``linear_sum_assignment``) on the cluster/class overlap; with K > classes, each cluster is matched
greedily (many-to-one) to the class it overlaps most. mIoU is then the mean over classes of TP / (TP + FP + FN),
over the classes that occur in the ground truth or the prediction; pixels of ``ignore_index`` are left out.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def confusion(pred: torch.Tensor, target: torch.Tensor, n_pred: int, n_classes: int,
              ignore_index: int = 255) -> torch.Tensor:
    """(n_pred, n_classes) int64 counts of (predicted id, true class) over the non-ignored pixels."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(target.shape)} differ in shape")
    valid = target != ignore_index
    p, t = pred[valid].long(), target[valid].long()
    if len(t) and (int(t.max()) >= n_classes or int(t.min()) < 0):
        raise ValueError(f"ground truth holds class {int(t.max())} outside [0, {n_classes}) "
                         f"(ignore index {ignore_index})")
    return torch.bincount(p * n_classes + t, minlength=n_pred * n_classes).reshape(n_pred, n_classes)


def miou(conf: torch.Tensor) -> float:
    """Mean IoU of a (classes [+ 1], classes) confusion (rows predicted, columns true).

    An optional extra last row holds pixels predicted as no class (unmatched clusters): they count as false
    negatives of their true class only.
    """
    conf = conf.double()
    n = conf.shape[1]
    tp = conf[:n].diag()
    union = conf.sum(0) + conf[:n].sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else float("nan")


def hungarian_match(conf: torch.Tensor) -> np.ndarray:
    """Cluster -> class map (n_clusters,) maximising total overlap one-to-one; unmatched clusters get -1."""
    rows, cols = linear_sum_assignment(-conf.double().numpy())
    mapping = np.full(conf.shape[0], -1, dtype=np.int64)
    mapping[rows] = cols
    return mapping


def greedy_match(conf: torch.Tensor) -> np.ndarray:
    """Cluster -> class map (n_clusters,): each cluster to the class it overlaps most (many-to-one)."""
    return conf.argmax(dim=1).numpy().astype(np.int64)


def matched_confusion(conf: torch.Tensor, mapping: np.ndarray) -> torch.Tensor:
    """(classes + 1, classes) confusion after relabelling clusters; the last row: clusters mapped to -1."""
    n_classes = conf.shape[1]
    out = torch.zeros(n_classes + 1, n_classes, dtype=conf.dtype)
    out.index_add_(0, torch.from_numpy(np.where(mapping < 0, n_classes, mapping)), conf)
    return out


def cluster_miou(conf: torch.Tensor, many_to_one: bool | None = None) -> tuple[float, np.ndarray]:
    """mIoU of a (clusters, classes) confusion after Hungarian (K == classes) or greedy (K > classes) matching."""
    greedy = conf.shape[0] > conf.shape[1] if many_to_one is None else many_to_one
    mapping = greedy_match(conf) if greedy else hungarian_match(conf)
    # classes never predicted and absent from the truth have no union and are skipped by miou()
    return miou(matched_confusion(conf, mapping)), mapping

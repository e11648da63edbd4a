"""Sinkhorn-Knopp teacher targets, all-reduce aware.

SwAV (arXiv 2006.09882) / DINOv2 (arXiv 2304.07193); reference ``dinov2/loss/dino_clstoken_loss.py:
sinkhorn_knopp_teacher``. Franca (FRANCA_METHOD.md, Losses) changes one detail: ONE global max (all-reduced across
ranks) is subtracted from the logits before ``exp``, not a per-sample one, because with only 3 iterations a
per-sample shift changes the result. Subtracting the same constant everywhere cancels in the first normalisation,
so adding a constant to all logits changes nothing.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _all_reduce(t: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    if _distributed():
        dist.all_reduce(t, op=op)
    return t


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: torch.Tensor, temperature: float, n_iterations: int = 3) -> torch.Tensor:
    """Balanced soft assignments of samples to prototypes.

    Args:
        teacher_logits: (n_samples, n_prototypes) on this rank; may be empty on a rank.
        temperature: teacher temperature tau_t.
        n_iterations: Sinkhorn iterations (3 in DINOv2 and Franca).

    Returns:
        (n_samples, n_prototypes) targets; each row sums to 1, and over all ranks every prototype receives
        about n_total / n_prototypes of the mass.
    """
    logits = teacher_logits.float()
    local_max = logits.max() if logits.numel() else logits.new_tensor(float("-inf"))
    global_max = _all_reduce(local_max.clone(), dist.ReduceOp.MAX)
    q = torch.exp((logits - global_max) / temperature).t()  # (K, n)
    n_total = _all_reduce(torch.tensor(float(q.shape[1]), device=q.device))
    n_protos = q.shape[0]
    q /= _all_reduce(q.sum())
    for _ in range(n_iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))  # rows: every prototype gets mass 1/K
        q /= n_protos
        q /= q.sum(dim=0, keepdim=True)  # columns: every sample gets mass 1/n
        q /= n_total
    q *= n_total
    return q.t()

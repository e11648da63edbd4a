"""DINO self-distillation loss on CLS tokens: local x global crops plus the cross-global pairs.

DINO (arXiv 2104.14294); reference ``dinov2/loss/dino_clstoken_loss.py`` and ``lightly/loss/dino_loss.py``.
Per FRANCA_METHOD.md the loss sums the cross-entropy over (every local crop x every global crop) + (global crop a vs
the OTHER global crop b) and divides by the number of pairs: 8 locals and 2 globals give 16 + 2 = 18 pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def n_dino_pairs(n_global: int, n_local: int) -> int:
    """Number of (student crop, teacher crop) pairs: every local x every global + ordered distinct global pairs."""
    return n_local * n_global + n_global * (n_global - 1)


def dino_loss(
    student_global: torch.Tensor,
    student_local: torch.Tensor,
    teacher_targets: torch.Tensor,
    n_global: int,
    student_temp: float,
) -> torch.Tensor:
    """Mean cross-entropy over crop pairs.

    Args:
        student_global: (n_global*B, K) student logits of the global crops, crop-major.
        student_local: (n_local*B, K) student logits of the local crops, crop-major (may have 0 rows).
        teacher_targets: (n_global*B, K) teacher probabilities of the global crops, crop-major.
        n_global: number of global crops (2).
        student_temp: student temperature (0.1).
    """
    targets = teacher_targets.chunk(n_global)
    batch = targets[0].shape[0]
    log_g = F.log_softmax(student_global.float() / student_temp, dim=-1).chunk(n_global)
    n_local = student_local.shape[0] // batch if batch else 0
    log_l = F.log_softmax(student_local.float() / student_temp, dim=-1).chunk(n_local) if n_local else ()
    total = student_global.new_zeros((), dtype=torch.float32)
    for t_idx, t in enumerate(targets):
        for s_idx, s in enumerate(log_g):
            if s_idx != t_idx:
                total = total - (t * s).sum(-1).mean()
        for s in log_l:
            total = total - (t * s).sum(-1).mean()
    return total / n_dino_pairs(n_global, n_local)

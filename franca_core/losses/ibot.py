"""iBOT masked-patch loss.

iBOT (arXiv 2111.07832); reference ``dinov2/loss/ibot_patch_loss.py: forward_masked``. Only masked patches enter:
the teacher's Sinkhorn-Knopp runs over the real masked patches (no padding rows), each crop's loss is the mean over
its masked patches, and the sum is divided by the number of global crops (unmasked crops count 0 but are in the
denominator), per FRANCA_METHOD.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_patch_weights(masks: torch.Tensor) -> torch.Tensor:
    """Weight of each masked patch, 1 / (masked patches of its crop), in the order of ``masks[masks]``.

    Args:
        masks: (n_crops, n_patches) bool.
    """
    per_crop = masks.sum(dim=-1, keepdim=True).clamp(min=1).float()
    return (1.0 / per_crop).expand_as(masks)[masks]


def ibot_loss(
    student_logits: torch.Tensor,
    teacher_targets: torch.Tensor,
    masks: torch.Tensor,
    student_temp: float,
) -> torch.Tensor:
    """iBOT loss over masked patches.

    Args:
        student_logits: (n_masked, K) student logits at the masked positions, in ``masks[masks]`` order.
        teacher_targets: (n_masked, K) teacher probabilities at the same positions.
        masks: (n_crops, n_patches) bool masks of all global crops (the denominator is n_crops).
        student_temp: student temperature (0.1).
    """
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0  # keeps the graph (DDP) when no crop of this batch is masked
    ce = -(teacher_targets * F.log_softmax(student_logits.float() / student_temp, dim=-1)).sum(-1)
    return (ce * masked_patch_weights(masks)).sum() / masks.shape[0]

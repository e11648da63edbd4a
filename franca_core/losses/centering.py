"""DINO's teacher centering: the alternative to Sinkhorn-Knopp targets that the ablation compares against.

DINO (arXiv 2104.14294, section 3.1; reference ``dino/main_dino.py: DINOLoss.update_center``): the teacher's logits
are centred with an exponential moving average of their batch mean and sharpened by the teacher temperature,
``softmax((t - c) / tau_t)``; the centre is updated after the targets are taken, ``c <- m c + (1 - m) mean(t)``, with
the batch mean all-reduced across ranks. Franca (like DINOv2) replaces this with Sinkhorn-Knopp; the ablation flow
trains both at equal compute (``train.loss.teacher_targets``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class TeacherCentering:
    """One EMA centre per named logit stream (e.g. ``dino.0`` ... ``ibot.4``), created at its first batch.

    Args:
        momentum: EMA momentum of the centre (0.9 in DINO).
    """

    def __init__(self, momentum: float = 0.9) -> None:
        self.momentum = momentum
        self.centers: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, name: str, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """Targets ``softmax((logits - centre) / temperature)`` of (n, K) logits; then the centre moves."""
        logits = teacher_logits.float()
        center = self.centers.get(name)
        if center is None:
            center = logits.new_zeros(1, logits.shape[1])
        targets = torch.softmax((logits - center) / temperature, dim=-1)
        stats = torch.cat([logits.sum(0), logits.new_tensor([float(logits.shape[0])])])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        if stats[-1] > 0:  # a rank (or all) may have no masked patches this step: keep the centre
            self.centers[name] = self.momentum * center + (1 - self.momentum) * (stats[:-1] / stats[-1])[None]
        return targets

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The centres (plain tensors: checkpoints load with ``weights_only=True``)."""
        return {k: v.detach().cpu() for k, v in self.centers.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], device: torch.device | str = "cpu") -> None:
        self.centers = {k: v.to(device) for k, v in state.items()}

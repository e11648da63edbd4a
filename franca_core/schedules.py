"""Every schedule of the recipe, in closed form of the step (so a checkpoint needs only the step).

Reference: ``dinov2/train/train.py: build_schedulers`` and ``dinov2/utils/utils.py: CosineScheduler``;
FRANCA_METHOD.md "Optimisation". lr: linear warmup from 0 to base_lr * sqrt(global_batch / 1024), then cosine to
min_lr; weight decay cosine 0.04 -> 0.2; teacher EMA momentum cosine 0.994 -> 1.0; teacher temperature linear
0.04 -> 0.07 over its warmup, then constant; the prototype layers' lr is 0 for the first freeze_last_layer_steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from franca_core.config import LossConfig, OptimConfig


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` at step 0 to ``end`` at step ``total`` (clamped outside)."""
    progress = min(max(step / total, 0.0), 1.0) if total > 0 else 1.0
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(step: int, warmup: int, total: int, peak: float, final: float) -> float:
    """Linear 0 -> ``peak`` over ``warmup`` steps, then cosine ``peak`` -> ``final`` at ``total``."""
    warmup = min(warmup, total)  # a run shorter than its warmup only warms up
    if step < warmup:
        return peak * step / warmup
    return cosine(step - warmup, total - warmup, peak, final)


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """Peak lr with square-root batch scaling: ``base_lr`` is per 1024 images."""
    return base_lr * math.sqrt(global_batch / 1024)


@dataclass(frozen=True)
class ScheduleValues:
    """The values in force at one step."""

    lr: float
    weight_decay: float
    momentum: float
    teacher_temp: float
    last_layer_lr: float


@dataclass(frozen=True)
class Schedules:
    """All schedules of one run; ``at(step)`` gives their values."""

    optim: OptimConfig
    loss: LossConfig
    global_batch: int

    @property
    def peak_lr(self) -> float:
        return scaled_lr(self.optim.base_lr, self.global_batch)

    def lr(self, step: int) -> float:
        o = self.optim
        return warmup_cosine(step, o.warmup_steps, o.total_steps, self.peak_lr, o.min_lr)

    def weight_decay(self, step: int) -> float:
        return cosine(step, self.optim.total_steps, self.optim.weight_decay_start, self.optim.weight_decay_end)

    def momentum(self, step: int) -> float:
        return cosine(step, self.optim.total_steps, self.optim.momentum_start, self.optim.momentum_end)

    def teacher_temp(self, step: int) -> float:
        lo, hi, n = self.loss.teacher_temp_start, self.loss.teacher_temp_end, self.loss.teacher_temp_warmup_steps
        return hi if step >= n else lo + (hi - lo) * step / n

    def at(self, step: int) -> ScheduleValues:
        lr = self.lr(step)
        frozen = step < self.optim.freeze_last_layer_steps
        return ScheduleValues(lr=lr, weight_decay=self.weight_decay(step), momentum=self.momentum(step),
                              teacher_temp=self.teacher_temp(step), last_layer_lr=0.0 if frozen else lr)

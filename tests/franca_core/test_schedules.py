from __future__ import annotations

import math

import pytest
import torch

from franca_core.config import LossConfig, OptimConfig
from franca_core.models.student_teacher import ema_update
from franca_core.schedules import Schedules, cosine


def _schedules() -> Schedules:
    optim = OptimConfig(total_steps=1000, warmup_steps=100, base_lr=1e-3, min_lr=1e-6, freeze_last_layer_steps=50)
    return Schedules(optim, LossConfig(teacher_temp_warmup_steps=300), global_batch=256)


def test_schedules__documented_values_at_start_warmup_end() -> None:
    s = _schedules()
    peak = 1e-3 * math.sqrt(256 / 1024)
    assert s.peak_lr == pytest.approx(5e-4)
    assert s.lr(0) == 0.0
    assert s.lr(100) == pytest.approx(peak)
    assert s.lr(1000) == pytest.approx(1e-6)
    assert s.lr(550) == pytest.approx(1e-6 + 0.5 * (peak - 1e-6))  # half-way through the cosine
    assert s.weight_decay(0) == pytest.approx(0.04) and s.weight_decay(1000) == pytest.approx(0.2)
    assert s.momentum(0) == pytest.approx(0.994) and s.momentum(1000) == pytest.approx(1.0)
    assert s.teacher_temp(0) == pytest.approx(0.04)
    assert s.teacher_temp(150) == pytest.approx(0.055)
    assert s.teacher_temp(300) == pytest.approx(0.07) and s.teacher_temp(999) == pytest.approx(0.07)


def test_schedules__last_layer_frozen_for_first_steps() -> None:
    s = _schedules()
    assert s.at(49).last_layer_lr == 0.0 and s.at(49).lr > 0
    assert s.at(50).last_layer_lr == s.at(50).lr


def test_cosine__clamps_outside_range() -> None:
    assert cosine(-5, 10, 1.0, 0.0) == 1.0 and cosine(50, 10, 1.0, 0.0) == 0.0


def test_ema_update__equals_formula() -> None:
    teacher, student = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, momentum=0.9)
    for t, t0, s in zip(teacher.parameters(), before, student.parameters()):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s.detach())

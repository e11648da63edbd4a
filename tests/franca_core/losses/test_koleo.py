from __future__ import annotations

import math

import pytest
import torch

from franca_core.losses.koleo import koleo_loss


def test_koleo_loss__closed_form_on_square() -> None:
    # 4 unit vectors at 90 degrees in a plane: every nearest neighbour is at distance sqrt(2).
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    assert koleo_loss(x).item() == pytest.approx(-math.log(math.sqrt(2) + 1e-8), rel=1e-6)


def test_koleo_loss__closed_form_mixed_distances() -> None:
    # Points at angles 0, 60, 180 degrees: nearest distances 1, 1, sqrt(2 - 2cos 120) = sqrt(3).
    angles = torch.tensor([0.0, math.pi / 3, math.pi])
    x = torch.stack([angles.cos(), angles.sin()], dim=1) * 3.0  # scale must not matter (L2-normalised)
    expected = -(math.log(1.0) + math.log(1.0) + math.log(math.sqrt(3.0))) / 3
    assert koleo_loss(x).item() == pytest.approx(expected, abs=1e-6)


def test_koleo_loss__one_sample_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        koleo_loss(torch.ones(1, 4))

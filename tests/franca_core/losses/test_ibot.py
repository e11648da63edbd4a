from __future__ import annotations

import torch

from franca_core.losses.ibot import ibot_loss, masked_patch_weights


def _masks() -> torch.Tensor:
    masks = torch.zeros(4, 16, dtype=torch.bool)
    masks[0, :5] = True
    masks[2, 3:12] = True
    return masks


def test_ibot_loss__ignores_unmasked_positions() -> None:
    g = torch.Generator().manual_seed(0)
    masks = _masks()
    patches_s = torch.randn(4, 16, 12, generator=g)
    patches_t = torch.softmax(torch.randn(4, 16, 12, generator=g), dim=-1)
    base = ibot_loss(patches_s[masks], patches_t[masks], masks, 0.1)
    noisy_s = torch.where(masks.unsqueeze(-1), patches_s, torch.randn(4, 16, 12, generator=g) * 100)
    assert torch.equal(ibot_loss(noisy_s[masks], patches_t[masks], masks, 0.1), base)


def test_ibot_loss__per_crop_mean_over_all_crops() -> None:
    masks = _masks()
    w = masked_patch_weights(masks)
    assert torch.allclose(w[:5], torch.full((5,), 1 / 5)) and torch.allclose(w[5:], torch.full((9,), 1 / 9))
    # uniform teacher, constant student: every masked patch has CE = log K; 2 masked crops of 4 -> log K * 2 / 4
    n = int(masks.sum())
    loss = ibot_loss(torch.zeros(n, 8), torch.full((n, 8), 1 / 8), masks, 0.1)
    assert torch.isclose(loss, torch.log(torch.tensor(8.0)) * 2 / 4)

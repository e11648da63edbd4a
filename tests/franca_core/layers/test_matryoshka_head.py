from __future__ import annotations

import pytest
import torch

from franca_core.layers.matryoshka_head import MatryoshkaHead, matryoshka_dims


def test_matryoshka_dims__paper_levels() -> None:
    assert matryoshka_dims(768, 5) == [48, 96, 192, 384, 768]
    with pytest.raises(ValueError, match="divisible"):
        matryoshka_dims(100, 5)


def test_matryoshka_head__prototypes_scale_with_dim() -> None:
    head = MatryoshkaHead(768, 5, n_prototypes=131072, hidden_dim=16, bottleneck_dim=8)
    assert head.n_prototypes == [8192, 16384, 32768, 65536, 131072]


def test_matryoshka_head__level_gradient_is_zero_beyond_its_dims() -> None:
    head = MatryoshkaHead(64, 5, n_prototypes=256, hidden_dim=32, bottleneck_dim=16)
    for i, d in enumerate(head.dims):
        z = torch.randn(6, 64, requires_grad=True)
        head(z)[i].logsumexp(-1).sum().backward()
        assert z.grad is not None
        assert torch.count_nonzero(z.grad[:, d:]) == 0, f"level {i} leaks gradient beyond d={d}"
        assert torch.count_nonzero(z.grad[:, :d]) > 0, f"level {i} gets no gradient on its own dims"

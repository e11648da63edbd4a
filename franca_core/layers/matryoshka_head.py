"""Matryoshka DINO / iBOT head: nested levels, level i sees only the first d_i dimensions.

Franca (arXiv 2507.14137), Sec. 3.2, after Matryoshka Representation Learning (arXiv 2205.13147); reference
``valeoai/Franca: franca/layers/dino_head.py``. With D-dim features z and n levels, d_i = D / 2**(n-1-i)
(D/16 ... D for 5 levels) and level i is its own DINOHead on z[..., :d_i] with K_i = K * d_i / D prototypes.
Levels are independent; their losses are summed with equal weight. Because level i reads only z[:d_i], its loss
has exactly zero gradient with respect to z[d_i:].
"""

from __future__ import annotations

import torch
from torch import nn

from franca_core.layers.dino_head import DINOHead


def matryoshka_dims(embed_dim: int, n_levels: int) -> list[int]:
    """Nested dimensions d_i = D / 2**(n_levels-1-i); raises if D is not divisible."""
    dims = [embed_dim // 2 ** (n_levels - 1 - i) for i in range(n_levels)]
    if dims[0] < 1 or any(d * 2 ** (n_levels - 1 - i) != embed_dim for i, d in enumerate(dims)):
        raise ValueError(f"embed_dim {embed_dim} is not divisible by 2**{n_levels - 1} for {n_levels} levels")
    return dims


class MatryoshkaHead(nn.Module):
    """(..., D) -> list of n_levels logits tensors, (..., K_i) each."""

    def __init__(self, embed_dim: int, n_levels: int, n_prototypes: int, hidden_dim: int,
                 bottleneck_dim: int) -> None:
        super().__init__()
        self.dims = matryoshka_dims(embed_dim, n_levels)
        self.n_prototypes = [max(1, n_prototypes * d // embed_dim) for d in self.dims]
        self.levels = nn.ModuleList(
            DINOHead(d, k, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim)
            for d, k in zip(self.dims, self.n_prototypes)
        )

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        return [head(z[..., :d]) for d, head in zip(self.dims, self.levels)]

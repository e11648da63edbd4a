"""DINO projection head with a weight-normalised prototype layer.

DINO (arXiv 2104.14294); reference ``dinov2/layers/dino_head.py`` and ``valeoai/Franca: franca/layers/dino_head.py``.
Per FRANCA_METHOD.md: Linear(d -> d) projection, MLP d -> hidden -> hidden -> bottleneck with GELU after every
layer including the last, then a bias-free Linear(bottleneck -> K) whose rows are unit vectors (weight normalisation
with the gain fixed to 1). Unlike DINOv2 the bottleneck is NOT L2-normalised, so the logits' scale is learned: with
normalised features the logits are cosines whose spread across images starts near 0.05, Sinkhorn-Knopp targets at
tau_t = 0.04 are then close to uniform, and a small run drifts into the uniform fixed point instead of out of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PrototypeLayer(nn.Module):
    """Bias-free linear layer with L2-normalised rows: logits are cosine similarities to K prototypes."""

    def __init__(self, in_dim: int, n_prototypes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_prototypes, in_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., n_prototypes)."""
        return F.linear(x, F.normalize(self.weight, dim=-1))


class DINOHead(nn.Module):
    """(..., in_dim) features -> (..., n_prototypes) logits."""

    def __init__(self, in_dim: int, n_prototypes: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, in_dim),  # the Matryoshka projection (linear)
            nn.Linear(in_dim, hidden_dim), act_layer(),
            nn.Linear(hidden_dim, hidden_dim), act_layer(),
            nn.Linear(hidden_dim, bottleneck_dim), act_layer(),
        )
        self.prototypes = PrototypeLayer(bottleneck_dim, n_prototypes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            # 0.02 as DINOv2/Franca at their widths (fan-in 1024-2048); at the widths of small profiles 0.02 shrinks
            # the output ~3x per layer, the logits start at ~0 and the targets stay uniform, so keep unit gain there.
            nn.init.trunc_normal_(m.weight, std=max(0.02, m.in_features ** -0.5))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prototypes(self.mlp(x))

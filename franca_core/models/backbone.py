"""The Franca ViT backbone, built from timm's VisionTransformer.

Reference: ``timm/models/vision_transformer.py: vit_base_patch14_dinov2`` and ``dinov2/models/vision_transformer.py``;
FRANCA_METHOD.md "Backbone". timm supplies the blocks, LayerScale, registers, dynamic image size and bicubic
position-embedding interpolation; this module adds what Franca needs on top:

- a SwiGLU FFN with DINOv2's hidden width h = 8 * ceil(floor(4D * 2/3) / 8) (B 2048, L 2736, g 4096);
- uniform stochastic depth (timm's default is linear in depth);
- a learned mask token that replaces masked patch embeddings BEFORE the position embedding is added;
- ``forward_crops``: a list of crop batches of different sizes, each at its own resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from timm.layers import DropPath, Mlp, SwiGLUPacked
from timm.models import checkpoint_seq
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from franca_core.config import ModelConfig

Features = dict[str, torch.Tensor]


def swiglu_hidden_dim(embed_dim: int) -> int:
    """DINOv2's SwiGLU width: 8 * ceil(floor(4D * 2/3) / 8)."""
    return 8 * math.ceil(math.floor(4 * embed_dim * 2 / 3) / 8)


def franca_swiglu(in_features: int, hidden_features: int | None = None, bias: bool = True, drop: float = 0.0,
                  **_: Any) -> nn.Module:
    """SwiGLU FFN (fused gate/value projection); the width comes from ``swiglu_hidden_dim``, not mlp_ratio.

    timm's Block passes ``act_layer``/``norm_layer`` meant for a GELU MLP; SwiGLU always gates with SiLU.
    """
    return SwiGLUPacked(in_features, hidden_features=2 * swiglu_hidden_dim(in_features), act_layer=nn.SiLU,
                        bias=bias, drop=drop)


class FrancaViT(VisionTransformer):
    """timm VisionTransformer with a mask token and multi-resolution crop forward.

    ``forward(x)`` (timm's, ``num_classes=0``) returns the normalised CLS token, (B, D).
    ``forward_masked(x, masks)`` returns ``{"cls": (B, D), "patch": (B, N, D)}`` after the final norm.
    """

    def __init__(self, drop_path_uniform: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mask_token = nn.Parameter(torch.zeros(1, self.embed_dim))
        for block in self.blocks:  # uniform stochastic depth, as DINOv2/Franca train it
            block.drop_path1 = DropPath(drop_path_uniform) if drop_path_uniform > 0 else nn.Identity()
            block.drop_path2 = DropPath(drop_path_uniform) if drop_path_uniform > 0 else nn.Identity()

    @property
    def patch_size(self) -> int:
        return int(self.patch_embed.patch_size[0])

    def forward_masked(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> Features:
        """Tokens of one batch of equal-size crops.

        Args:
            x: (B, 3, H, W) images; H and W multiples of the patch size.
            masks: optional (B, N) bool, N = (H/p)*(W/p); True replaces that patch embedding by the mask token.
        """
        tokens = self.patch_embed(x)  # (B, H/p, W/p, D) with dynamic_img_size
        if masks is not None:
            grid = masks.view(tokens.shape[0], tokens.shape[1], tokens.shape[2], 1)
            tokens = torch.where(grid, self.mask_token.to(tokens.dtype), tokens)
        tokens = self.norm_pre(self.patch_drop(self._pos_embed(tokens)))
        if self.grad_checkpointing and torch.is_grad_enabled():
            # timm's set_grad_checkpointing(): keep each block's input only, recompute the block in the backward
            # pass (non-reentrant: works under DDP and autocast; the RNG is replayed, so drop path draws the same)
            tokens = checkpoint_seq(self.blocks, tokens, use_reentrant=False)
        else:
            tokens = self.blocks(tokens)
        tokens = self.norm(tokens)
        return {"cls": tokens[:, 0], "patch": tokens[:, self.num_prefix_tokens :]}

    def forward_crops(self, crops: Sequence[torch.Tensor],
                      masks: Sequence[torch.Tensor | None] | None = None) -> list[Features]:
        """Forward several crop batches (e.g. globals at 224 px, locals at 98 px), one pass per resolution."""
        masks = masks if masks is not None else [None] * len(crops)
        return [self.forward_masked(x, m) for x, m in zip(crops, masks)]


def build_backbone(cfg: ModelConfig, drop_path: float | None = None, img_size: int | None = None) -> FrancaViT:
    """Build the backbone of a config; ``drop_path=0`` for the teacher, ``img_size`` for high-res grids."""
    return FrancaViT(
        drop_path_uniform=cfg.drop_path if drop_path is None else drop_path,
        img_size=img_size or cfg.img_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        num_classes=0,
        init_values=cfg.layerscale_init,
        reg_tokens=cfg.num_registers,
        mlp_layer=franca_swiglu if cfg.ffn == "swiglu" else Mlp,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        dynamic_img_size=True,
        qkv_bias=True,
    )

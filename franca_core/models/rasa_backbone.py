"""A backbone whose patch-token output carries the fitted RASA projection (CLS untouched).

Reference: ``valeoai/Franca: rasa/src/rasa_head.py`` (RASAHead applied after the backbone) and FRANCA_METHOD.md
"RASA": the composite is one (D, D) matrix applied after the final norm, shipped with the model. Here it is a
buffer, so it is part of ``state_dict()`` and travels with the weights (``franca_core.models.io.save_backbone``).
"""

from __future__ import annotations

import torch
from torch import nn

from franca_core.models.backbone import Features, FrancaViT
from franca_core.models.foreign import TimmBackbone
from franca_core.rasa import apply_projection


class RasaBackbone(nn.Module):
    """``FrancaViT`` + a ``rasa_matrix`` buffer (D, D) applied to the patch tokens of ``forward_masked``.

    Args:
        backbone: the frozen backbone the projection was fitted on.
        matrix: (D, D) composite from ``franca_core.rasa.fit_rasa``.
    """

    rasa_matrix: torch.Tensor  # a registered buffer (nn.Module's __getattr__ types it Tensor | Module)

    def __init__(self, backbone: FrancaViT | TimmBackbone, matrix: torch.Tensor) -> None:
        super().__init__()
        d = backbone.embed_dim
        if tuple(matrix.shape) != (d, d):
            raise ValueError(f"RASA matrix has shape {tuple(matrix.shape)}; the backbone needs ({d}, {d})")
        self.backbone = backbone
        self.register_buffer("rasa_matrix", matrix.detach().clone().float())

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_size

    @property
    def embed_dim(self) -> int:
        return int(self.backbone.embed_dim)

    def forward_masked(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> Features:
        """``{"cls": (B, D) unchanged, "patch": (B, N, D) @ rasa_matrix}``."""
        out = self.backbone.forward_masked(x, masks)
        return {"cls": out["cls"], "patch": apply_projection(out["patch"], self.rasa_matrix)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised CLS token (B, D), as the plain backbone's ``forward``."""
        return self.backbone(x)

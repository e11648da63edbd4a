"""Student / teacher networks: backbone + Matryoshka DINO head (CLS) + Matryoshka iBOT head (patch tokens).

Reference: ``dinov2/train/ssl_meta_arch.py`` (student/teacher dicts, EMA) and ``valeoai/Franca:
franca/train/ssl_meta_arch.py``. Both networks are the same ``FrancaModel`` class; the student is the one module
that a DDP wrapper sees, so one ``forward`` computes every student output and gradients sync once per step.
The teacher is an EMA copy without stochastic depth that only sees the global crops, unmasked.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from franca_core.config import TrainConfig
from franca_core.layers.matryoshka_head import MatryoshkaHead
from franca_core.models.backbone import FrancaViT, build_backbone

Outputs = dict[str, torch.Tensor | list[torch.Tensor]]


class FrancaModel(nn.Module):
    """Backbone with its two Matryoshka heads."""

    def __init__(self, backbone: FrancaViT, dino_head: MatryoshkaHead, ibot_head: MatryoshkaHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.ibot_head = ibot_head

    def forward(self, global_crops: torch.Tensor, local_crops: torch.Tensor, masks: torch.Tensor,
                mask_input: bool = True) -> Outputs:
        """All head outputs of one batch.

        Args:
            global_crops: (G*B, 3, Hg, Wg), crop-major.
            local_crops: (L*B, 3, Hl, Wl), crop-major; may have 0 rows.
            masks: (G*B, N) bool; masked patch positions of the global crops.
            mask_input: replace masked patch embeddings by the mask token (student) or not (teacher).

        Returns:
            ``cls_global`` (G*B, D) backbone CLS; ``dino_global`` / ``dino_local`` / ``ibot``: one logits tensor per
            Matryoshka level, (G*B, K_i), (L*B, K_i) and (n_masked, K_i), the latter in ``masks[masks]`` order.
        """
        feats = self.backbone.forward_masked(global_crops, masks if mask_input else None)
        cls = feats["cls"]
        n_global = cls.shape[0]
        if local_crops.shape[0]:
            cls_all = torch.cat([cls, self.backbone.forward_masked(local_crops)["cls"]])
        else:
            cls_all = cls
        dino = self.dino_head(cls_all)  # one head call for globals and locals
        ibot = self.ibot_head(feats["patch"][masks])
        return {
            "cls_global": cls,
            "dino_global": [logits[:n_global] for logits in dino],
            "dino_local": [logits[n_global:] for logits in dino],
            "ibot": ibot,
        }


def build_model(cfg: TrainConfig, drop_path: float | None = None) -> FrancaModel:
    """A student (config drop path) or teacher (``drop_path=0``) network."""
    d = cfg.model.embed_dim
    heads = cfg.heads
    return FrancaModel(
        build_backbone(cfg.model, drop_path=drop_path),
        MatryoshkaHead(d, heads.n_levels, heads.dino.n_prototypes, heads.dino.hidden_dim, heads.dino.bottleneck_dim),
        MatryoshkaHead(d, heads.n_levels, heads.ibot.n_prototypes, heads.ibot.hidden_dim, heads.ibot.bottleneck_dim),
    )


def build_student_teacher(cfg: TrainConfig) -> tuple[FrancaModel, FrancaModel]:
    """Student and teacher with identical initial weights; the teacher has no stochastic depth and no grads.

    With ``train.grad_checkpointing`` the student's backbone recomputes its blocks' activations in the backward pass
    (it keeps each block's input only: about one more forward of compute for far less activation memory, what lets
    L and g fit a GPU);
    the teacher never keeps activations (no grad), so it needs none.
    """
    student = build_model(cfg)
    student.backbone.set_grad_checkpointing(cfg.grad_checkpointing)
    teacher = build_model(cfg, drop_path=0.0)
    teacher.load_state_dict(copy.deepcopy(student.state_dict()))
    teacher.requires_grad_(False)
    return student, teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, over all parameters (heads included)."""
    t_params: list[torch.Tensor] = list(teacher.parameters())
    s_params: list[torch.Tensor] = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)

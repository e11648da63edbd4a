"""AdamW parameter groups of the Franca recipe.

Reference: ``dinov2/utils/param_groups.py: get_params_groups_with_decay`` and ``dinov2/train/train.py``. No weight
decay on biases, norms and LayerScale gammas; the patch embedding's lr is scaled by 0.2; the prototype layers are
their own group so their lr can be held at 0 while the last layer is frozen. Each group carries its multipliers,
and ``apply_schedule`` sets the group's lr / weight decay from the schedule values of a step.
"""

from __future__ import annotations

import torch
from torch import nn

from franca_core.config import OptimConfig
from franca_core.schedules import ScheduleValues


def _no_weight_decay(name: str, param: torch.Tensor) -> bool:
    return name.endswith(".bias") or "norm" in name or "gamma" in name or param.ndim <= 1


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters, grouped by (wd multiplier, lr multiplier, last layer)."""
    groups: dict[tuple[float, float, bool], list[torch.Tensor]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (0.0 if _no_weight_decay(name, param) else 1.0,
               cfg.patch_embed_lr_mult if "patch_embed" in name else 1.0,
               "prototypes" in name)
        groups.setdefault(key, []).append(param)
    param_groups = [{"params": params, "wd_mult": wd, "lr_mult": lr, "is_last_layer": last}
                    for (wd, lr, last), params in sorted(groups.items())]
    return torch.optim.AdamW(param_groups, lr=0.0, betas=cfg.betas, weight_decay=0.0, foreach=True)


def apply_schedule(optimizer: torch.optim.Optimizer, values: ScheduleValues) -> None:
    """Set every group's lr and weight decay for this step."""
    for group in optimizer.param_groups:
        base = values.last_layer_lr if group["is_last_layer"] else values.lr
        group["lr"] = base * group["lr_mult"]
        group["weight_decay"] = values.weight_decay * group["wd_mult"]

"""Frozen feature extraction: CLS and mean-pooled patch tokens of a backbone over a dataset.

Batches go to the backbone's device and run under ``inference_autocast`` there (bf16 on a CUDA GPU that has it);
features come back to the CPU (the protocols' side) as float32 (patch tokens float16).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from franca_core.eval.device import inference_autocast, module_device

# ``backbone.forward_masked``: any module with that method (FrancaViT, RasaBackbone); nn.Module's __getattr__ types
# such attributes as ``Tensor | Module``, so call sites cast to this.
ForwardMasked = Callable[[torch.Tensor], dict[str, torch.Tensor]]


@torch.no_grad()
def extract_features(backbone: nn.Module, dataset: Dataset, batch_size: int = 256,
                     num_workers: int = 0) -> dict[str, torch.Tensor]:
    """``{"cls": (n, D), "patch_mean": (n, D), "labels": (n,)}``; ``dataset`` yields (tensor, label)."""
    was_training = backbone.training
    backbone.eval()
    cls, patch_mean, labels = [], [], []
    device = module_device(backbone)
    for images, y in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
        with inference_autocast(device):
            out = cast(ForwardMasked, backbone.forward_masked)(images.to(device, non_blocking=True))
        cls.append(out["cls"].float().cpu())
        patch_mean.append(out["patch"].float().mean(dim=1).cpu())
        labels.append(torch.as_tensor(y))
    backbone.train(was_training)
    return {"cls": torch.cat(cls), "patch_mean": torch.cat(patch_mean), "labels": torch.cat(labels)}


@torch.no_grad()
def extract_eval_features(backbone: nn.Module, dataset: Dataset, batch_size: int = 256,
                          keep_patches: bool = False) -> dict[str, torch.Tensor]:
    """Frozen features of an ``EvalSet`` (items: image (3, H, W), label, mask).

    Returns:
        ``cls`` (n, D) and ``patch_mean`` (n, D) float32, ``labels`` (n,) int64; with ``keep_patches`` also
        ``patch`` (n, h, w, D) float16 (half the memory; k-means and k-NN on it lose nothing measurable);
        ``masks`` (n, gh, gw) int64 when the set has masks.
    """
    was_training = backbone.training
    backbone.eval()
    patch_size, device = int(cast(int, backbone.patch_size)), module_device(backbone)
    out: dict[str, list[torch.Tensor]] = {"cls": [], "patch_mean": [], "labels": [], "patch": [], "masks": []}
    for images, labels, masks in DataLoader(dataset, batch_size=batch_size, pin_memory=device.type == "cuda"):
        with inference_autocast(device):
            forward = cast(ForwardMasked, backbone.forward_masked)(images.to(device, non_blocking=True))
        feats = {k: v.float().cpu() for k, v in forward.items()}
        patch = feats["patch"]
        out["cls"].append(feats["cls"].float())
        out["patch_mean"].append(patch.mean(dim=1).float())
        out["labels"].append(labels.long())
        if keep_patches:
            h, w = images.shape[-2] // patch_size, images.shape[-1] // patch_size
            out["patch"].append(patch.reshape(patch.shape[0], h, w, -1).half())
        if masks.numel():
            out["masks"].append(masks.long())
    backbone.train(was_training)
    return {k: torch.cat(v) for k, v in out.items() if v}

"""Collate multi-crop samples into one training batch with CyclicMask masks.

Reference: ``dinov2/data/collate.py: collate_data_and_cast`` (batch layout) and FRANCA_METHOD.md (CyclicMask).
Crops are laid out crop-major, as DINOv2 does: ``global_crops[k*B + i]`` is global crop k of sample i, so the
teacher output for global crop k is the contiguous chunk k.

The batch is a plain dict of tensors (picklable across DataLoader workers and Ray):
    global_crops: (2B, 3, Hg, Wg)
    local_crops:  (n_local*B, 3, Hl, Wl), or (0, 3, Hl, Wl) when there are no local crops
    masks:        (2B, Ng) bool, True = masked patch, Ng = (Hg/patch)*(Wg/patch)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from franca_core.config import MaskingConfig
from franca_core.masking.cyclic_mask import cyclic_mask, stratified_mask_counts

Sample = dict[str, list[torch.Tensor]]


def make_masks(
    n_crops: int, grid: tuple[int, int], cfg: MaskingConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Masks for ``n_crops`` global crops: ``int(masked_fraction * n_crops)`` of them masked, then shuffled."""
    h, w = grid
    n_masked_crops = int(cfg.masked_fraction * n_crops)
    counts = stratified_mask_counts(n_masked_crops, h * w, cfg.ratio_min, cfg.ratio_max, generator)
    masks = torch.zeros(n_crops, h * w, dtype=torch.bool)
    for j, m in enumerate(counts):
        masks[j] = cyclic_mask(h, w, m, generator, roll=cfg.roll, min_aspect=cfg.min_aspect).flatten()
    return masks[torch.randperm(n_crops, generator=generator)]


class MultiCropCollate:
    """Callable collate_fn: list of ``{"global": [g0, g1], "local": [l0, ...]}`` samples -> batch dict."""

    def __init__(self, masking: MaskingConfig, patch_size: int, generator: torch.Generator | None = None) -> None:
        self.masking = masking
        self.patch_size = patch_size
        self.generator = generator

    def __call__(self, samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
        n_global = len(samples[0]["global"])
        n_local = len(samples[0]["local"])
        global_crops = torch.stack([s["global"][k] for k in range(n_global) for s in samples])
        if n_local:
            local_crops = torch.stack([s["local"][k] for k in range(n_local) for s in samples])
        else:
            local_crops = global_crops.new_zeros((0, *global_crops.shape[1:]))
        grid = (global_crops.shape[-2] // self.patch_size, global_crops.shape[-1] // self.patch_size)
        masks = make_masks(global_crops.shape[0], grid, self.masking, self.generator)
        return {"global_crops": global_crops, "local_crops": local_crops, "masks": masks}

"""Multi-crop augmentation (torchvision transforms v2), per FRANCA_METHOD.md "Multi-crop".

Reference: ``dinov2/data/augmentations.py: DataAugmentationDINO``. Two global crops (blur p=1.0 on the first;
blur p=0.1 + solarize p=0.2 on the second) and ``n_local`` local crops (blur p=0.5), each with a bicubic
random-resized crop, horizontal flip, colour jitter (0.4, 0.4, 0.2, 0.1) p=0.8 and grayscale p=0.2, then ImageNet
normalisation. Works on PIL images or uint8 (3, H, W) tensors; returns ``{"global": [...], "local": [...]}``.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2

from franca_core.config import CropsConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _blur(size: int, p: float) -> v2.Transform:
    kernel = 2 * max(1, round(size / 25)) + 1  # about 23 px at 224, 5 px at 64: sigma range as in DINOv2
    return v2.RandomApply([v2.GaussianBlur(kernel_size=kernel, sigma=(0.1, 2.0))], p=p)


def normalize() -> v2.Transform:
    """uint8 image -> float tensor with ImageNet mean/std (also used for evaluation)."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class MultiCropAugmentation:
    """Callable: one image -> two global and ``n_local`` local augmented crops."""

    def __init__(self, cfg: CropsConfig) -> None:
        self.n_local = cfg.n_local
        bicubic = v2.InterpolationMode.BICUBIC

        def geometric(size: int, scale: tuple[float, float]) -> list[v2.Transform]:
            return [v2.RandomResizedCrop(size, scale=scale, interpolation=bicubic, antialias=True),
                    v2.RandomHorizontalFlip(p=0.5)]

        photometric: list[v2.Transform] = []
        if cfg.color_jitter:
            photometric = [v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2)]
        g, loc = cfg.global_size, cfg.local_size
        blur = cfg.blur
        # Crop, flip and colour ops run on the PIL image (C code, 1.6x the crops/s of the same ops on small uint8
        # tensors, where torchvision's HSV round trip for hue dominates); ToImage comes after them.
        self.global1 = v2.Compose([*geometric(g, cfg.global_scale), *photometric, v2.ToImage(),
                                   *([_blur(g, 1.0)] if blur else []), normalize()])
        self.global2 = v2.Compose([*geometric(g, cfg.global_scale), *photometric, v2.ToImage(),
                                   *([_blur(g, 0.1), v2.RandomSolarize(threshold=128, p=0.2)] if blur else []),
                                   normalize()])
        self.local = v2.Compose([*geometric(loc, cfg.local_scale), *photometric, v2.ToImage(),
                                 *([_blur(loc, 0.5)] if blur else []), normalize()])

    def __call__(self, image: Any) -> dict[str, list[torch.Tensor]]:
        return {
            "global": [self.global1(image), self.global2(image)],
            "local": [self.local(image) for _ in range(self.n_local)],
        }

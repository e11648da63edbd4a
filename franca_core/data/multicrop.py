"""Multi-crop augmentation (torchvision transforms v2), per FRANCA_METHOD.md "Multi-crop".

Reference: ``dinov2/data/augmentations.py: DataAugmentationDINO``. Two global crops (blur p=1.0 on the first;
blur p=0.1 + solarize p=0.2 on the second) and ``n_local`` local crops (blur p=0.5), each with a bicubic
random-resized crop, horizontal flip, colour jitter (0.4, 0.4, 0.2, 0.1) p=0.8 and grayscale p=0.2, then ImageNet
normalisation. Works on PIL images or uint8 (3, H, W) tensors; returns ``{"global": [...], "local": [...]}``.
The blur's sigma is drawn uniformly from [0.1, 2.0] (DINOv2's range) and applied by PIL's ``GaussianBlur`` on PIL
images (torchvision's 2-D convolution on tensors dominated the loader's time), by torchvision's on tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2

from franca_core.config import CropsConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


SIGMA = (0.1, 2.0)


class GaussianBlur:
    """Gaussian blur with sigma ~ U(0.1, 2.0), drawn from torch's RNG (seeded like the other transforms).

    PIL images go through PIL's ``ImageFilter.GaussianBlur(radius=sigma)`` (C code; its radius is the standard
    deviation), before the tensor conversion; tensors through torchvision's ``gaussian_blur`` with a kernel of about
    6 sigma at the largest sigma for this crop size.
    """

    def __init__(self, size: int) -> None:
        self.kernel = 2 * max(1, round(size / 25)) + 1  # about 19 px at 224, 5 px at 64: as before on tensors

    def __call__(self, image: Any) -> Any:
        sigma = float(torch.empty(1).uniform_(*SIGMA))
        if isinstance(image, Image.Image):
            return image.filter(ImageFilter.GaussianBlur(radius=sigma))
        return v2.functional.gaussian_blur(image, kernel_size=[self.kernel, self.kernel], sigma=[sigma, sigma])


def _blur(size: int, p: float) -> v2.Transform:
    return v2.RandomApply([GaussianBlur(size)], p=p)


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
        # Crop, flip, colour ops and blur run on the PIL image (C code, 1.6x the crops/s of the same ops on small
        # uint8 tensors, where torchvision's HSV round trip for hue and its 2-D blur dominate); ToImage comes after.
        self.global1 = v2.Compose([*geometric(g, cfg.global_scale), *photometric,
                                   *([_blur(g, 1.0)] if blur else []), v2.ToImage(), normalize()])
        self.global2 = v2.Compose([*geometric(g, cfg.global_scale), *photometric,
                                   *([_blur(g, 0.1)] if blur else []), v2.ToImage(),
                                   *([v2.RandomSolarize(threshold=128, p=0.2)] if blur else []), normalize()])
        self.local = v2.Compose([*geometric(loc, cfg.local_scale), *photometric,
                                 *([_blur(loc, 0.5)] if blur else []), v2.ToImage(), normalize()])

    def __call__(self, image: Any) -> dict[str, list[torch.Tensor]]:
        return {
            "global": [self.global1(image), self.global2(image)],
            "local": [self.local(image) for _ in range(self.n_local)],
        }

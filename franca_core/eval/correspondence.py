"""Keypoint correspondence on known warps: how well patch features follow the image content under a homography.

Reference: Franca (arXiv 2507.14137) section 5, 3D awareness, after Probe3D (El Banani et al., arXiv 2404.08636),
which scores correspondence as PCK (percentage of correct keypoints). Here the pairs are synthetic and exact:
each evaluation image is warped by a random homography ``H`` drawn from the seed, both images go through the same
frozen backbone path as every other protocol (``forward_masked``, patch tokens after the final norm), and for each
source patch centre ``p`` whose true location ``H(p)`` lies inside the warped image, the prediction is the centre of
the warped image's patch whose feature is the source patch's nearest neighbour (cosine). A correspondence is correct
at ``alpha`` when its error is at most ``alpha * max(H, W)`` pixels.

Coordinates are continuous pixels (x right, y down), pixel ``k`` covering ``[k, k + 1)``, so the centre of patch
``(i, j)`` is ``((j + 0.5) p, (i + 0.5) p)``. Predictions are patch centres, so even perfect features are off by
up to half a patch diagonal: ``oracle`` reports the PCK of the patch centre nearest to each true location, the
ceiling at that grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from franca_core.eval.device import inference_autocast, module_device
from franca_core.eval.features import ForwardMasked

PCK_ALPHAS = (0.05, 0.1)
# Bounds of the random warp at strength 1: moderate, so most of the image stays in view.
MAX_ROTATION_DEG, MAX_LOG_SCALE, MAX_SHEAR, MAX_SHIFT, MAX_PERSPECTIVE = 15.0, 0.15, 0.1, 0.05, 0.1

Variants = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def random_homographies(n: int, height: int, width: int, strength: float = 1.0,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 3, 3) float64 homographies in pixel coordinates (source -> warped), about the image centre.

    Each is a rotation, a scale, an x-shear, a shift and a perspective term, drawn uniformly within the module's
    bounds times ``strength`` (0: identity). Built in coordinates normalised to [-1, 1] over the longer side.
    """
    u = (torch.rand(n, 7, generator=generator, dtype=torch.float64) * 2 - 1) * strength
    theta, scale = u[:, 0] * math.radians(MAX_ROTATION_DEG), torch.exp(u[:, 1] * MAX_LOG_SCALE)
    cos, sin, shear = torch.cos(theta) * scale, torch.sin(theta) * scale, u[:, 2] * MAX_SHEAR
    a = torch.zeros(n, 3, 3, dtype=torch.float64)
    # rotation-scale times the shear [[1, k], [0, 1]]
    a[:, 0, 0], a[:, 0, 1], a[:, 1, 0], a[:, 1, 1] = cos, cos * shear - sin, sin, sin * shear + cos
    a[:, 0, 2], a[:, 1, 2] = u[:, 3] * 2 * MAX_SHIFT, u[:, 4] * 2 * MAX_SHIFT
    a[:, 2, 0], a[:, 2, 1], a[:, 2, 2] = u[:, 5] * MAX_PERSPECTIVE, u[:, 6] * MAX_PERSPECTIVE, 1.0
    half = max(height, width) / 2
    norm = torch.tensor([[1 / half, 0, -width / 2 / half], [0, 1 / half, -height / 2 / half], [0, 0, 1]],
                        dtype=torch.float64)
    return torch.linalg.inv(norm) @ a @ norm


def apply_homography(homographies: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """(n, P, 2) images of (P, 2) or (n, P, 2) xy points under (n, 3, 3) homographies."""
    pts = points.to(homographies.dtype).expand(homographies.shape[0], -1, -1)
    mapped = torch.cat([pts, torch.ones_like(pts[..., :1])], -1) @ homographies.transpose(1, 2)
    return mapped[..., :2] / mapped[..., 2:]


def warp_images(images: torch.Tensor, homographies: torch.Tensor) -> torch.Tensor:
    """(n, C, H, W) images warped so that source point ``p`` lands at ``H(p)`` (bilinear; zeros outside)."""
    n, _, height, width = images.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64) + 0.5,
                            torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij")
    targets = torch.stack([xs, ys], -1).reshape(1, -1, 2)
    sources = apply_homography(torch.linalg.inv(homographies), targets)  # where each output pixel comes from
    grid = sources / torch.tensor([width, height], dtype=torch.float64) * 2 - 1
    grid = grid.reshape(n, height, width, 2).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def patch_centres(grid_h: int, grid_w: int, patch_size: int) -> torch.Tensor:
    """(grid_h * grid_w, 2) xy centres of the patches in row-major (token) order."""
    ys, xs = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    return (torch.stack([xs, ys], -1).reshape(-1, 2).double() + 0.5) * patch_size


def nearest_patches(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(n, N) index of each (n, N, D) source token's cosine nearest neighbour among the (n, M, D) target tokens."""
    sim = F.normalize(source.float(), dim=-1) @ F.normalize(target.float(), dim=-1).transpose(1, 2)
    return sim.argmax(dim=-1)


def pck(errors: torch.Tensor, size: int) -> dict[str, float]:
    """``{"pck@0.05": ..., "pck@0.1": ...}``: fraction of pixel errors within ``alpha * size``."""
    return {f"pck@{a:g}": float((errors <= a * size).double().mean()) if errors.numel() else math.nan
            for a in PCK_ALPHAS}


@torch.no_grad()
def correspondence_errors(backbone: nn.Module, images: torch.Tensor, homographies: torch.Tensor,
                          variants: Variants | None = None) -> dict[str, torch.Tensor]:
    """Pixel errors of the in-view correspondences of one batch, per feature variant.

    Args:
        backbone: a module with ``forward_masked`` and ``patch_size``.
        images: (n, 3, H, W) normalised images, sides multiples of the patch size.
        homographies: (n, 3, 3) source -> warped, pixel coordinates.
        variants: patch tokens (n, N, D) -> named variants (e.g. raw and RASA-projected); None: ``{"raw": x}``.

    Returns:
        ``{variant: (P,) errors}`` and ``"oracle"``: the error of the patch centre nearest each true location,
        over the P source centres whose true location lies in the warped image.
    """
    p = int(cast(int, backbone.patch_size))
    height, width = images.shape[-2:]
    forward, device = cast(ForwardMasked, backbone.forward_masked), module_device(backbone)

    def patches(x: torch.Tensor) -> torch.Tensor:  # on the backbone's device; the matching runs on the CPU
        with inference_autocast(device):
            return forward(x.to(device))["patch"].float().cpu()

    source, warped = patches(images), patches(warp_images(images, homographies))
    centres = patch_centres(height // p, width // p, p)
    true = apply_homography(homographies, centres)  # (n, N, 2)
    inside = (true >= 0).all(-1) & (true[..., 0] < width) & (true[..., 1] < height)
    limit = torch.tensor([width // p - 1, height // p - 1], dtype=torch.float64)
    nearest = (torch.minimum(torch.floor(true / p).clamp(min=0), limit) + 0.5) * p
    project = variants or (lambda x: {"raw": x})
    out, dst_v = {}, project(warped)
    for name, tokens in project(source).items():
        predicted = centres[nearest_patches(tokens, dst_v[name])]  # (n, N, 2)
        out[name] = (predicted - true).norm(dim=-1)[inside]
    out["oracle"] = (nearest - true).norm(dim=-1)[inside]
    return out


def keypoint_correspondence(backbone: nn.Module, dataset: Dataset, rows: list[int], strength: float = 1.0,
                            seed: int = 0, batch_size: int = 64, variants: Variants | None = None) -> dict[str, Any]:
    """PCK@0.05 / PCK@0.1 of ``rows`` of ``dataset`` (items ``(image, ...)``) under random homographies.

    Returns:
        ``{variant: {"pck@0.05", "pck@0.1"}, "oracle": {...}, "points", "images", "image_size", "warp"}``.
    """
    if not rows:
        raise ValueError("keypoint correspondence needs at least one image")
    gen = torch.Generator().manual_seed(seed)
    was_training = backbone.training
    backbone.eval()
    errors: dict[str, list[torch.Tensor]] = {}
    size = (0, 0)
    for batch in DataLoader(Subset(dataset, rows), batch_size=batch_size):
        images = batch[0]
        size = (int(images.shape[-2]), int(images.shape[-1]))
        homographies = random_homographies(len(images), *size, strength, gen)
        for name, err in correspondence_errors(backbone, images, homographies, variants).items():
            errors.setdefault(name, []).append(err)
    backbone.train(was_training)
    flat = {name: torch.cat(parts) for name, parts in errors.items()}
    scale = max(size)
    return {**{name: pck(err, scale) for name, err in flat.items()}, "points": int(flat["oracle"].numel()),
            "images": len(rows), "image_size": list(size), "warp": strength}

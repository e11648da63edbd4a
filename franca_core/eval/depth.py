"""Monocular depth probe: ridge regression from frozen patch tokens to each patch's log depth.

Reference: Franca (arXiv 2507.14137) section 5, 3D awareness, after Probe3D (El Banani et al., arXiv 2404.08636),
which probes frozen features for depth; this is its cheapest form, a linear map per patch (no dense decoder), with
the usual depth metrics: RMSE (in the depth unit) and the fraction of patches with max(pred/gt, gt/pred) < 1.25.
The mean predictor (the training patches' mean log depth everywhere) is reported beside it as the floor.

Depth set format (``eval.depth``: name -> path): a Parquet file with an ``image`` column (encoded image bytes, as
the other evaluation sets) and a ``depth`` column holding, per row, either a 16-bit PNG or a ``.npy`` float32
array (``numpy.save``) of the image's size (height x width). Depth = stored value x ``depth_scale`` (schema
metadata, default 1.0; e.g. 0.001 for millimetre PNGs). Zero, negative or non-finite values mean "no measurement".
A patch's target is the log of the mean depth of its measured pixels; patches with none are left out.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image

from franca_core.config import EvalConfig
from franca_core.eval.data import EvalSet, _size_of

NPY_MAGIC = b"\x93NUMPY"


def decode_depth(blob: bytes, scale: float = 1.0, where: str = "depth map") -> np.ndarray:
    """(H, W) float32 depth from 16-bit PNG or ``.npy`` bytes; NaN where there is no measurement."""
    try:
        if blob[:6] == NPY_MAGIC:
            raw = np.load(io.BytesIO(blob), allow_pickle=False)
        else:
            with Image.open(io.BytesIO(blob)) as img:
                raw = np.asarray(img)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{where}: not a 16-bit PNG or .npy depth map ({exc})") from None
    if raw.ndim != 2:
        raise ValueError(f"{where}: a depth map must be 2-D (height x width); got shape {raw.shape}")
    depth = raw.astype(np.float32) * np.float32(scale)
    depth[~(np.isfinite(depth) & (depth > 0))] = np.nan
    return depth


class DepthSet(EvalSet):
    """An evaluation set whose rows carry depth maps (module docstring: the format); items as ``EvalSet``."""

    depths: list[bytes]
    depth_scale: float

    def _read_parquet(self) -> None:
        super()._read_parquet()
        names = pq.read_schema(self.path).names
        if "depth" not in names:
            raise ValueError(f"depth set {self.name!r} ({self.path}) has no 'depth' column (columns: {names})")
        self.depths = pq.read_table(self.path, columns=["depth"]).column("depth").to_pylist()
        self.depth_scale = float(self.meta.get("depth_scale", 1.0))

    def _read_folder(self) -> None:
        raise ValueError(f"depth set {self.name!r} ({self.path}) must be a Parquet file with image and depth columns")

    def _setup(self, patch_size: int, resolution: int | None, max_images: int | None, seed: int,
               mask_max_side: int) -> None:
        super()._setup(patch_size, resolution, max_images, seed, mask_max_side)
        self.depths = [self.depths[i] for i in self.rows]

    def patch_depth(self, i: int) -> torch.Tensor:
        """(h, w) mean measured depth of each patch of row ``i`` at the set's geometry; NaN where none."""
        where = f"depth set {self.name!r} row {int(self.rows[i])}"
        blob = self.depths[i]
        if blob is None:
            raise ValueError(f"{where}: no depth map")
        depth = torch.from_numpy(decode_depth(blob, self.depth_scale, where))
        w0, h0 = _size_of(self._bytes(i))
        if tuple(depth.shape) != (h0, w0):
            raise ValueError(f"{where}: the depth map is {depth.shape[1]}x{depth.shape[0]} but its image is "
                             f"{w0}x{h0} (depth maps must have their image's size)")
        height, width = self.image_size
        depth = F.interpolate(depth[None, None], size=(height, width), mode="nearest")[0, 0]
        p = self.patch_size
        return depth.reshape(height // p, p, width // p, p).permute(0, 2, 1, 3).flatten(2).nanmean(-1)

    def patch_depths(self) -> torch.Tensor:
        """(n, h, w) ``patch_depth`` of every row."""
        return torch.stack([self.patch_depth(i) for i in range(len(self))])


def open_depth_sets(paths: Mapping[str, str], patch_size: int, cfg: EvalConfig) -> dict[str, DepthSet]:
    """``DepthSet`` per name of ``eval.depth``, with the configured resolution and image limits."""
    return {name: DepthSet(path, patch_size, cfg.resolution, cfg.max_images_per_set.get(name, cfg.max_images),
                           cfg.seed, cfg.mask_max_side, name) for name, path in paths.items()}


def depth_metrics(pred_log: torch.Tensor, depth: torch.Tensor) -> dict[str, float]:
    """RMSE, RMSE of log depth and delta < 1.25 accuracy of predicted log depths against (P,) depths."""
    pred = pred_log.double().exp()
    gt = depth.double()
    ratio = torch.maximum(pred / gt, gt / pred)
    return {"rmse": float((pred - gt).square().mean().sqrt()),
            "rmse_log": float((pred_log.double() - gt.log()).square().mean().sqrt()),
            "delta1": float((ratio < 1.25).double().mean())}


def _valid(tokens: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(P, D) tokens and (P,) depths of the patches with a measurement."""
    flat, d = tokens.reshape(-1, tokens.shape[-1]), depth.reshape(-1)
    keep = torch.isfinite(d)
    return flat[keep].double(), d[keep].double()


def depth_probe(train_tokens: torch.Tensor, train_depth: torch.Tensor, test_tokens: torch.Tensor,
                test_depth: torch.Tensor, alpha: float = 1e-3, max_patches: int = 100_000,
                seed: int = 0) -> dict[str, Any]:
    """Fit ridge regression on (n, h, w, D) train tokens -> log (n, h, w) depths; score on the test images.

    Features are standardised with the training statistics; the ridge objective is
    ``mean((y - Xw)^2) + alpha * |w|^2`` (closed form), fitted on at most ``max_patches`` random patches.

    Returns:
        ``{"probe": metrics, "mean_predictor": metrics, "patches": {"train", "test"}}`` (``depth_metrics``).
    """
    x, d = _valid(train_tokens, train_depth)
    xt, dt = _valid(test_tokens, test_depth)
    if len(d) < 2 or len(dt) == 0:
        raise ValueError(f"depth probe needs measured patches on both sides; got {len(d)} train, {len(dt)} test")
    if len(d) > max_patches:
        keep = torch.randperm(len(d), generator=torch.Generator().manual_seed(seed))[:max_patches]
        x, d = x[keep], d[keep]
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    x, xt = (x - mean) / std, (xt - mean) / std
    y = d.log()
    y_mean = y.mean()
    gram = x.T @ x / len(y) + alpha * torch.eye(x.shape[1], dtype=x.dtype)
    w = torch.linalg.solve(gram, x.T @ (y - y_mean) / len(y))
    return {"probe": depth_metrics(xt @ w + y_mean, dt),
            "mean_predictor": depth_metrics(torch.full_like(dt, float(y_mean)), dt),
            "patches": {"train": len(d), "test": len(dt)}}


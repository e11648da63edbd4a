"""Frozen features of any image source, written as a Parquet table (what ``franca features`` writes).

Each image is resized (short side, bicubic, antialiased) and centre-cropped to a square of ``resolution`` (a multiple
of the patch size), normalised as in training, and passed through the backbone's ``forward_masked`` in batches.
Columns: ``key`` (string), ``cls`` and ``patch_mean`` (fixed-size lists of D float32; patch tokens after RASA when
the model carries it), and with ``keep_patches`` ``patch`` (h * w * D float16, raster order, row-major (h, w, D)).
The schema metadata names the model, D, the grid and the resolution. The file is written batch by batch (constant
memory) to a temporary name and renamed at the end. With ``workers`` > 0 each batch's images are decoded and resized
by that many threads (PIL and torchvision release the GIL there), in source order.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn
from torchvision.transforms import v2

from franca_core.data.datasets import decode_image
from franca_core.data.multicrop import normalize
from franca_core.eval.features import ForwardMasked


def square_transform(side: int) -> v2.Transform:
    """Short side to ``side`` (bicubic, antialiased), centre crop ``side`` x ``side``, ImageNet normalisation."""
    return v2.Compose([v2.ToImage(), v2.Resize(side, antialias=True, interpolation=v2.InterpolationMode.BICUBIC),
                       v2.CenterCrop(side), normalize()])


def _batches(images: Iterable[tuple[str, bytes]], size: int, transform: v2.Transform, workers: int = 0
             ) -> Iterator[tuple[list[str], torch.Tensor]]:
    def prepare(item: tuple[str, bytes]) -> torch.Tensor:
        return transform(decode_image(item[1], item[0]))

    source = iter(images)
    with ThreadPoolExecutor(max_workers=workers) if workers > 0 else _NoPool() as pool:
        while chunk := list(islice(source, size)):
            yield [key for key, _ in chunk], torch.stack(list(pool.map(prepare, chunk)))


class _NoPool:
    """``ThreadPoolExecutor``'s ``map`` in the calling thread."""

    def __enter__(self) -> _NoPool:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn: Callable[[tuple[str, bytes]], torch.Tensor], items: list[tuple[str, bytes]]
            ) -> Iterator[torch.Tensor]:
        return map(fn, items)


def _fixed(values: np.ndarray, dtype: pa.DataType) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=dtype), values.shape[1])


@torch.no_grad()
def write_feature_table(model: nn.Module, images: Iterable[tuple[str, bytes]], out: str | Path, resolution: int,
                        patch_size: int, batch_size: int = 64, keep_patches: bool = False,
                        metadata: dict[str, str] | None = None,
                        progress: Callable[[int], None] | None = None, workers: int = 0) -> dict[str, Any]:
    """Extract and write (see the module docstring); ``progress(n)`` after each batch of n images.

    Returns:
        ``{"images", "embed_dim", "grid", "resolution", "seconds", "images_per_s", "path"}``.

    Raises:
        ValueError: no images, or a resolution smaller than one patch.
    """
    side = resolution // patch_size * patch_size
    if side < patch_size:
        raise ValueError(f"resolution {resolution} is smaller than the patch size {patch_size}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    forward = cast(ForwardMasked, model.forward_masked)
    writer: pq.ParquetWriter | None = None
    n, dim, start = 0, 0, time.perf_counter()
    grid = (side // patch_size, side // patch_size)
    try:
        for keys, batch in _batches(images, batch_size, square_transform(side), workers):
            feats = forward(batch.to(device))
            cls, patch = feats["cls"].float().cpu(), feats["patch"].float().cpu()
            dim = int(cls.shape[-1])
            columns: dict[str, pa.Array] = {
                "key": pa.array(keys, type=pa.string()),
                "cls": _fixed(cls.numpy(), pa.float32()),
                "patch_mean": _fixed(patch.mean(dim=1).numpy(), pa.float32())}
            if keep_patches:
                columns["patch"] = _fixed(patch.reshape(len(keys), -1).half().numpy(), pa.float16())
            table = pa.table(columns)
            if writer is None:
                meta = {"embed_dim": str(dim), "grid": f"{grid[0]},{grid[1]}", "resolution": str(side),
                        **(metadata or {})}
                writer = pq.ParquetWriter(tmp, table.schema.with_metadata(meta))
            writer.write_table(table)
            n += len(keys)
            if progress is not None:
                progress(len(keys))
        if writer is None:
            raise ValueError("no images to extract features from")
        writer.close()
        writer = None
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        model.train(was_training)
    seconds = time.perf_counter() - start
    return {"images": n, "embed_dim": dim, "grid": list(grid), "resolution": side, "seconds": round(seconds, 2),
            "images_per_s": round(n / seconds, 1) if seconds > 0 else None, "path": str(out)}

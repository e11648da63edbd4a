"""Evaluation image sets: a ``../shared/data`` Parquet file or an ImageFolder tree, at one fixed geometry.

Every image of a set is resized (bicubic, antialiased) to one size whose sides are multiples of the patch size, so
batches stack and each image gives an (h, w) patch grid. The size is the first image's, or, with ``resolution``,
that shape scaled so its short side is ``resolution`` (aspect kept). Segmentation masks (Parquet ``mask`` column,
PNG, same size as their image) are resized NEAREST to a mask grid whose long side is at most ``mask_max_side``:
the grid on which mIoU is counted (the Leopart/RASA reference counts at 100 px).

Items are ``(image (3, H, W) float, label int (-1 = none), mask (gh, gw) int64 or an empty tensor)``.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from franca_core.data.datasets import decode_image
from franca_core.data.multicrop import normalize

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _size_of(data: bytes) -> tuple[int, int]:
    """(width, height) from an image header, without decoding the pixels."""
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


class EvalSet(Dataset):
    """A labelled (and optionally segmented) image set for the evaluation protocols.

    Args:
        path: a Parquet file (``image``, ``label``, optional ``mask`` columns) or an ImageFolder root.
        patch_size: the backbone's patch size; image sides become multiples of it.
        resolution: short side in pixels, or None for the set's own size.
        max_images: a deterministic random subset (``seed``) of at most this many rows, kept in row order.
        mask_max_side: long side of the grid on which masks are compared.
        name: a display name (default: the file stem).
    """

    items: list[Any]  # encoded images (Parquet, memory) or file paths (ImageFolder)
    labels: np.ndarray
    masks: list[bytes] | None
    label_classes: list[str]
    mask_classes: list[str]

    def __init__(self, path: str | Path, patch_size: int, resolution: int | None = None,
                 max_images: int | None = None, seed: int = 0, mask_max_side: int = 96,
                 name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.stem
        self.meta: dict[str, str] = {}
        self.content_digest: str | None = None
        if self.path.is_file():
            self._read_parquet()
        elif self.path.is_dir():
            self._read_folder()
        else:
            raise FileNotFoundError(f"evaluation set {self.name!r} not found: {self.path}")
        self._setup(patch_size, resolution, max_images, seed, mask_max_side)

    @classmethod
    def from_records(cls, name: str, images: list[bytes], patch_size: int, labels: list[int] | None = None,
                     masks: list[bytes] | None = None, mask_classes: list[str] | None = None,
                     resolution: int | None = None, max_images: int | None = None, seed: int = 0,
                     mask_max_side: int = 96, ignore_index: int = 255, square: bool = False) -> EvalSet:
        """A set from encoded images (and PNG masks) in memory, e.g. generated images or images read from shards.

        ``square`` (no masks, ``resolution`` given): resize the short side and centre-crop to a square, for sets of
        mixed aspect ratios such as web images.
        """
        if square and (masks is not None or resolution is None):
            raise ValueError("square evaluation geometry needs a resolution and no masks")
        self = cls.__new__(cls)
        self.path, self.name, self.meta = Path(f"<memory:{name}>"), name, {}
        self.items, self.masks = list(images), (list(masks) if masks is not None else None)
        self.labels = np.asarray(labels if labels is not None else [-1] * len(self.items), dtype=np.int64)
        self.label_classes, self.mask_classes, self.ignore_index = [], list(mask_classes or []), ignore_index
        h = hashlib.sha256()
        for blob in [*self.items, *(self.masks or [])]:
            h.update(hashlib.sha256(blob).digest())
        h.update(self.labels.tobytes())
        self.content_digest = h.hexdigest()
        self._setup(patch_size, resolution, max_images, seed, mask_max_side)
        if square:
            side = _round_to(float(resolution or 0), patch_size)
            self.image_size, self.grid = (side, side), (side // patch_size, side // patch_size)
            self.transform = v2.Compose([v2.ToImage(), v2.Resize(side, antialias=True,
                                                                 interpolation=v2.InterpolationMode.BICUBIC),
                                         v2.CenterCrop(side), normalize()])
        return self

    def _setup(self, patch_size: int, resolution: int | None, max_images: int | None, seed: int,
               mask_max_side: int) -> None:
        """Subset, mask checks and geometry (shared by every constructor)."""
        n = len(self.items)
        if n == 0:
            raise ValueError(f"evaluation set {self.name!r} ({self.path}) is empty")
        self.rows = np.arange(n)
        if max_images is not None and n > max_images:
            self.rows = np.sort(np.random.default_rng(seed).permutation(n)[:max_images])
        self.items = [self.items[i] for i in self.rows]
        self.labels = self.labels[self.rows]
        self.masks = [self.masks[i] for i in self.rows] if self.masks is not None else None
        self._check_masks()
        w0, h0 = _size_of(self._bytes(0))
        scale = resolution / min(h0, w0) if resolution else 1.0
        self.image_size = (_round_to(h0 * scale, patch_size), _round_to(w0 * scale, patch_size))
        self.grid = (self.image_size[0] // patch_size, self.image_size[1] // patch_size)
        shrink = min(1.0, mask_max_side / max(h0, w0))
        self.mask_size = (max(1, round(h0 * shrink)), max(1, round(w0 * shrink)))
        self.patch_size = patch_size
        self.transform = v2.Compose([v2.ToImage(), v2.Resize(self.image_size, antialias=True,
                                                             interpolation=v2.InterpolationMode.BICUBIC),
                                     normalize()])

    # ------------------------------------------------------------------------------------------- reading
    def _read_parquet(self) -> None:
        table = pq.read_table(self.path)
        if "image" not in table.column_names:
            raise ValueError(f"{self.path} has no 'image' column (columns: {table.column_names})")
        self.items = table.column("image").to_pylist()
        n = len(self.items)
        self.labels = np.asarray(table.column("label").to_pylist() if "label" in table.column_names else [-1] * n,
                                 dtype=np.int64)
        self.masks = table.column("mask").to_pylist() if "mask" in table.column_names else None
        self.meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        self.label_classes = json.loads(self.meta.get("label_classes", self.meta.get("classes", "[]")))
        if self.masks is not None:
            self.mask_classes = json.loads(self.meta.get("classes", "[]"))
            self.ignore_index = int(self.meta.get("ignore_index", 255))
        else:
            self.mask_classes, self.ignore_index = [], 255

    def _read_folder(self) -> None:
        classes = sorted(d.name for d in self.path.iterdir() if d.is_dir())
        samples = [(p, i) for i, c in enumerate(classes) for p in sorted((self.path / c).iterdir())
                   if p.suffix.lower() in IMAGE_EXTENSIONS]
        self.items = [p for p, _ in samples]
        self.labels = np.asarray([label for _, label in samples], dtype=np.int64)
        self.masks, self.label_classes, self.mask_classes, self.ignore_index = None, classes, [], 255

    def _bytes(self, i: int) -> bytes:
        item = self.items[i]
        return item.read_bytes() if isinstance(item, Path) else item

    def _check_masks(self) -> None:
        """A mask must have its image's size: one error naming the first row that does not."""
        if self.masks is None:
            return
        for i, mask in enumerate(self.masks):
            if mask is None:
                raise ValueError(f"evaluation set {self.name!r}: row {int(self.rows[i])} has no mask")
            image_size, mask_size = _size_of(self._bytes(i)), _size_of(mask)
            if image_size != mask_size:
                raise ValueError(f"evaluation set {self.name!r}: the mask of row {int(self.rows[i])} is "
                                 f"{mask_size[0]}x{mask_size[1]} but its image is {image_size[0]}x{image_size[1]} "
                                 "(masks must have their image's size)")

    # ------------------------------------------------------------------------------------------ queries
    @property
    def has_labels(self) -> bool:
        """Every row has an image-level label, and there are at least two classes."""
        return bool((self.labels >= 0).all()) and len(np.unique(self.labels)) >= 2

    @property
    def has_masks(self) -> bool:
        return self.masks is not None

    @property
    def n_classes(self) -> int:
        return max(len(self.label_classes), int(self.labels.max()) + 1)

    @property
    def n_mask_classes(self) -> int:
        """Mask classes from the metadata, else the largest non-ignored mask value + 1 (decodes every mask)."""
        if self.mask_classes:
            return len(self.mask_classes)
        values = {int(v) for i in range(len(self)) for v in torch.unique(self.mask(i)) if v != self.ignore_index}
        return max(values) + 1 if values else 0

    def identity(self) -> dict[str, Any]:
        """What the features of this set depend on (for caching): file identity, rows, geometry."""
        rows = hashlib.sha256(np.ascontiguousarray(self.rows).tobytes()).hexdigest()[:16]
        if self.content_digest is not None:
            source: dict[str, Any] = {"content": self.content_digest}
        else:
            stat = self.path.stat()
            source = {"path": str(self.path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        return {**source, "rows": rows, "n": len(self), "image_size": list(self.image_size),
                "mask_size": list(self.mask_size)}

    def at_size(self, image_size: tuple[int, int]) -> EvalSet:
        """A view of this set with its images resized to ``image_size`` (e.g. an OOD set at the in-distribution
        geometry, so the two differ in content, not in resolution); masks keep their grid."""
        other = copy.copy(self)
        other.image_size = tuple(image_size)  # type: ignore[assignment]
        other.grid = (image_size[0] // self.patch_size, image_size[1] // self.patch_size)
        other.transform = v2.Compose([v2.ToImage(), v2.Resize(other.image_size, antialias=True,
                                                              interpolation=v2.InterpolationMode.BICUBIC),
                                      normalize()])
        return other

    def image(self, i: int) -> Image.Image:
        """Row ``i`` as an RGB PIL image at its stored size (for figures)."""
        return decode_image(self._bytes(i), f"{self.path}[{int(self.rows[i])}]")

    def mask(self, i: int) -> torch.Tensor:
        """Row ``i``'s mask (gh, gw) int64 on the mask grid; an empty tensor when the set has none."""
        if self.masks is None:
            return torch.zeros(0, dtype=torch.int64)
        with Image.open(io.BytesIO(self.masks[i])) as img:
            resized = img.resize((self.mask_size[1], self.mask_size[0]), Image.Resampling.NEAREST)
            return torch.from_numpy(np.asarray(resized, dtype=np.int64).copy())

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        return self.transform(self.image(i)), int(self.labels[i]), self.mask(i)

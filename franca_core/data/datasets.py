"""Map-style image datasets: in-memory images, ``../shared/data`` Parquet files, ImageFolder trees.

Every dataset yields ``(transform(image), label)`` with a PIL RGB image before the transform; label is -1 where
there is none. Corrupt images raise ``ValueError`` naming the file and row.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image
from torch.utils.data import Dataset

Transform = Callable[[Image.Image], Any]


def decode_image(data: bytes, where: str = "") -> Image.Image:
    """JPEG/PNG bytes -> RGB PIL image; a clear error naming ``where`` for corrupt bytes."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except Exception as exc:  # PIL raises several types for bad bytes
        raise ValueError(f"cannot decode image {where}: {exc}") from exc


class ImageListDataset(Dataset):
    """Images already in memory (e.g. the synthetic generator's)."""

    def __init__(self, images: Sequence[Image.Image], labels: Sequence[int] | None = None,
                 transform: Transform | None = None) -> None:
        self.images, self.labels = list(images), list(labels) if labels is not None else [-1] * len(images)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = self.images[i]
        return (self.transform(img) if self.transform else img), self.labels[i]


class ParquetImageDataset(Dataset):
    """A Parquet file in the ``../shared/data`` layout (``image`` bytes, ``label``, optional ``mask``)."""

    def __init__(self, path: str | Path, transform: Transform | None = None, limit: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"image Parquet not found: {self.path}")
        table = pq.read_table(self.path, columns=None)
        if "image" not in table.column_names:
            raise ValueError(f"{self.path} has no 'image' column (columns: {table.column_names})")
        if limit is not None:
            table = table.slice(0, limit)
        if table.num_rows == 0:
            raise ValueError(f"{self.path} holds no rows")
        self.images: list[bytes] = table.column("image").to_pylist()
        self.labels: list[int] = (table.column("label").to_pylist() if "label" in table.column_names
                                  else [-1] * table.num_rows)
        self.keys: list[str] = (table.column("key").to_pylist() if "key" in table.column_names
                                else [str(i) for i in range(table.num_rows)])
        self.masks: list[bytes] | None = table.column("mask").to_pylist() if "mask" in table.column_names else None
        meta = table.schema.metadata or {}
        self.metadata = {k.decode(): v.decode() for k, v in meta.items()}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = decode_image(self.images[i], f"{self.path}[{i}]")
        return (self.transform(img) if self.transform else img), self.labels[i]


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` (torchvision ImageFolder layout); classes sorted by name."""

    EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

    def __init__(self, root: str | Path, transform: Transform | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        self.samples = [(p, label) for label, c in enumerate(self.classes)
                        for p in sorted((self.root / c).iterdir()) if p.suffix.lower() in self.EXTENSIONS]
        if not self.samples:
            raise ValueError(f"no images under {self.root} (expected root/<class>/<image>)")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, label = self.samples[i]
        img = decode_image(path.read_bytes(), str(path))
        return (self.transform(img) if self.transform else img), label

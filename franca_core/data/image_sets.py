"""Encoded images of a local image set, without decoding: a ``../shared/data`` Parquet or an image folder.

Used to serve an image set as a web corpus (source stage) and to fingerprint evaluation sets (decontamination).
A folder is read recursively; in the ImageFolder layout (``root/<class>/<image>``) the class is the label.
``image_set_digest`` identifies the set's content (file bytes), so a decontamination result is reused only while
the evaluation images are the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def _folder_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def iter_image_set(path: str | Path, limit: int | None = None) -> Iterator[tuple[str, bytes, int, str]]:
    """Yield ``(key, encoded bytes, label, label_name)``; label -1 / '' where there is none.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a Parquet without an ``image`` column, or a folder without images.
    """
    src = Path(path)
    if src.is_file():
        schema = pq.read_schema(src)
        if "image" not in schema.names:
            raise ValueError(f"image set {src} has no 'image' column (columns: {schema.names})")
        cols = [c for c in ("key", "image", "label", "label_name") if c in schema.names]
        table = pq.read_table(src, columns=cols)
        if limit is not None:
            table = table.slice(0, limit)
        data = {c: table.column(c).to_pylist() for c in cols}
        for i, blob in enumerate(data["image"]):
            label = data["label"][i] if "label" in data else -1
            yield (data["key"][i] if "key" in data else str(i)), blob, int(label), (
                data["label_name"][i] if "label_name" in data else "")
    elif src.is_dir():
        files = _folder_files(src)
        if not files:
            raise ValueError(f"image folder {src} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        classes = sorted({p.parent.name for p in files}) if all(p.parent != src for p in files) else []
        for p in files[:limit]:
            label = classes.index(p.parent.name) if classes else -1
            yield str(p.relative_to(src).with_suffix("")), p.read_bytes(), label, (p.parent.name if classes else "")
    else:
        raise FileNotFoundError(f"image set not found: {src}")


def image_set_digest(path: str | Path) -> str:
    """sha256 of the set's bytes: the Parquet file, or every image file (relative path + bytes) of a folder."""
    src = Path(path)
    if not src.exists():
        raise FileNotFoundError(f"image set not found: {src}")
    digest = hashlib.sha256()
    files = [src] if src.is_file() else _folder_files(src)
    for f in files:
        if src.is_dir():
            digest.update(str(f.relative_to(src)).encode() + b"\0")
        with open(f, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()

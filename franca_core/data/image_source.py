"""Encoded images from wherever a user keeps them: an image folder, an image Parquet or webdataset shards.

``iter_images(source)`` yields ``(key, bytes)`` in a fixed order:

- a folder of images (read recursively, ``franca_core.data.image_sets``), keys their relative paths;
- a Parquet file with an ``image`` column (the ``../shared/data`` layout), keys its ``key`` column or row numbers;
- webdataset shards: a ``.tar`` file, a folder of ``.tar`` files, or a brace pattern (``shards/{000..009}.tar``, local
  or any fsspec URL), keys ``<shard name>/<sample key>``; every image member of a sample counts (one per sample in
  the usual layout).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
from braceexpand import braceexpand
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from franca_core.data.image_sets import IMAGE_EXTENSIONS, iter_image_set

TAR_SUFFIXES = (".tar",)


def shard_urls(source: str) -> list[str] | None:
    """The shard files ``source`` names, or None when it names no webdataset shards."""
    if "{" in source:
        return list(braceexpand(source))
    path = Path(source)
    if source.endswith(TAR_SUFFIXES):
        return [source]
    if path.is_dir():
        tars = sorted(str(p) for p in path.iterdir() if p.suffix in TAR_SUFFIXES)
        has_images = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.rglob("*") if p.is_file())
        return tars if tars and not has_images else None
    return None


def iter_images(source: str | Path, limit: int | None = None) -> Iterator[tuple[str, bytes]]:
    """``(key, encoded image)`` of ``source`` (see the module docstring), at most ``limit`` of them.

    Raises:
        FileNotFoundError: the source does not exist.
        ValueError: a Parquet without an ``image`` column, a folder without images.
    """
    text = str(source)
    shards = shard_urls(text)
    if shards is None:
        for key, blob, _, _ in iter_image_set(text, limit):
            yield key, blob
        return
    n = 0
    for url in shards:
        name = Path(url).stem
        try:
            stream = fsspec.open(url, "rb").open()
        except FileNotFoundError:
            raise FileNotFoundError(f"webdataset shard not found: {url}") from None
        with stream:
            for member in tar_file_iterator(stream):
                key, ext = base_plus_ext(member["fname"])
                if key is None or ext is None or f".{ext.lower()}" not in IMAGE_EXTENSIONS:
                    continue
                yield f"{name}/{key}", member["data"]
                n += 1
                if limit is not None and n >= limit:
                    return


def count_images(source: str | Path) -> int | None:
    """How many images ``iter_images`` will yield, where that is cheap to know (None for shards)."""
    text = str(source)
    if shard_urls(text) is not None:
        return None
    path = Path(text)
    if path.is_file():
        return int(pq.read_metadata(path).num_rows)
    if path.is_dir():
        return sum(1 for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    return None

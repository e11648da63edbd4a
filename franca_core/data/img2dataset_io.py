"""img2dataset's webdataset output: tar shards and their per-shard Parquet logs, on any fsspec filesystem.

img2dataset 1.47 writes, per shard ``NNNNN``: ``NNNNN.tar`` (``KEY.jpg``, ``KEY.txt``, ``KEY.json`` per successful
sample), ``NNNNN.parquet`` (one row per input URL: ``key``, ``status``, ``error_message``, ``sha256`` of the
original bytes, the columns passed through) and ``NNNNN_stats.json`` (written when the shard is finished; its
presence is what img2dataset's incremental mode reads as "done").
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from franca_core.data.download_causes import download_cause

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")


def finished_shards(fs: AbstractFileSystem, folder: str) -> list[str]:
    """Shard ids (``"00000"``, ...) whose ``_stats.json`` exists, sorted."""
    names = [p.rsplit("/", 1)[-1] for p in fs.glob(f"{folder}/*_stats.json")]
    return sorted(n.split("_", 1)[0] for n in names)


def read_download_log(fs: AbstractFileSystem, folder: str) -> pa.Table:
    """All finished shards' Parquet rows, with ``shard`` (tar path) and ``cause`` (``quality.CAUSES``) added."""
    tables = []
    for shard in finished_shards(fs, folder):
        with fs.open(f"{folder}/{shard}.parquet", "rb") as f:
            table = pq.read_table(f)
        causes = [download_cause(s, e) for s, e in zip(table.column("status").to_pylist(),
                                                        table.column("error_message").to_pylist())]
        table = table.append_column("cause", pa.array(causes, pa.string()))
        tables.append(table.append_column("shard", pa.array([f"{folder}/{shard}.tar"] * table.num_rows)))
    if not tables:
        raise ValueError(f"no finished img2dataset shard under {folder}")
    return pa.concat_tables(tables, promote_options="default")


def merged_stats(fs: AbstractFileSystem, folder: str) -> dict[str, Any]:
    """img2dataset's ``*_stats.json`` summed over shards (counts and ``status_dict``)."""
    total: dict[str, Any] = {"count": 0, "successes": 0, "failed_to_download": 0, "failed_to_resize": 0,
                             "duration": 0.0, "status_dict": {}, "shards": 0}
    for shard in finished_shards(fs, folder):
        with fs.open(f"{folder}/{shard}_stats.json", "r") as f:
            stats = json.load(f)
        for key in ("count", "successes", "failed_to_download", "failed_to_resize", "duration"):
            total[key] += stats.get(key, 0)
        for status, n in stats.get("status_dict", {}).items():
            total["status_dict"][status] = total["status_dict"].get(status, 0) + n
        total["shards"] += 1
    return total


def iter_tar(fs: AbstractFileSystem, path: str) -> Iterator[tuple[str, bytes, dict[str, Any]]]:
    """Yield ``(key, image bytes, json metadata)`` per sample of one webdataset tar, streaming."""
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        key: str | None = None
        image: bytes | None = None
        meta: dict[str, Any] = {}
        for member in tar:
            if not member.isfile():
                continue
            stem, _, suffix = member.name.rpartition("/")[-1].partition(".")
            if stem != key:
                if key is not None and image is not None:
                    yield key, image, meta
                key, image, meta = stem, None, {}
            body = tar.extractfile(member).read()  # type: ignore[union-attr]
            if suffix in IMAGE_SUFFIXES:
                image = body
            elif suffix == "json":
                meta = json.loads(body)
        if key is not None and image is not None:
            yield key, image, meta

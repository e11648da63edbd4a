"""Storage helpers shared by the data stages (source, select, download, dedup): the store, Parquet and file I/O.

S3 endpoints and credentials come from the standard AWS variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
...), which s3fs/botocore read themselves; nothing here logs them.
"""

from __future__ import annotations

import hashlib
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from franca_core.config import PipelineConfig
from tasks.storage import StageStore, is_local


class StorageError(ValueError):
    """The storage root cannot be used (unreachable endpoint, missing bucket, not writable)."""


def open_store(cfg: PipelineConfig) -> StageStore:
    """The stage store of ``cfg.storage.root``, checked reachable now rather than half-way through a stage."""
    root = cfg.storage.root
    store = StageStore(root)
    fs, base = fsspec.core.url_to_fs(root)
    try:
        if is_local(fs):
            fs.makedirs(base, exist_ok=True)
        else:  # remote: the bucket must exist (creating buckets is an operator's decision)
            fs.info(base.split("/", 1)[0])  # raises (unlike exists(), which answers False to a dead endpoint)
    except Exception as exc:  # botocore / OSError / aiohttp errors all mean the same thing here
        raise StorageError(f"storage root {root!r} is unreachable or unusable: {type(exc).__name__}: {exc}") from exc
    return store


def fs_of(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) of a URI or local path."""
    return fsspec.core.url_to_fs(uri)


def sha256_uri(uri: str) -> str:
    """sha256 of a file's bytes, streamed."""
    fs, path = fs_of(uri)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_parquet(uri: str, **kwargs: Any) -> pa.Table:
    """Read a Parquet file from any fsspec URI."""
    fs, path = fs_of(uri)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, **kwargs)


def write_parquet(table: pa.Table, fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Write a Parquet file (zstd) to ``path`` on ``fs``."""
    with fs.open(path, "wb") as f:
        pq.write_table(table, f, compression="zstd")

"""Storage helpers shared by the data stages (source, select, download, dedup): the store, Parquet and file I/O.

S3 endpoints and credentials come from the standard AWS variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
...), which s3fs/botocore read themselves; nothing here logs them.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from franca_core.config import PipelineConfig
from tasks.storage import StageStore


class StorageError(ValueError):
    """The storage root cannot be used (unreachable endpoint, missing bucket, not writable)."""


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local filesystem."""
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def move_tree(fs: fsspec.AbstractFileSystem, src: str, dst: str) -> None:
    """Move a folder: one rename locally, a copy of its file list then a delete on object stores."""
    if is_local(fs):
        fs.mv(src, dst, recursive=True)
        return
    files = fs.find(src)
    fs.copy(files, [dst + f[len(src):] for f in files])
    fs.rm(src, recursive=True)


class DataStore(StageStore):
    """``StageStore`` whose final move also works for nested outputs on object stores.

    ``StageStore.writing`` moves the temporary folder with ``fs.mv(tmp, final, recursive=True)``. On S3, fsspec
    2026.9 expands that to every key *and* every inferred "directory" of a nested tree and copies them with
    ``on_error="raise"``, so the copy of a directory fails with NoSuchKey. The data stages write nested trees
    (``www/images/...``, ``shards/...``), so on object stores this moves the file list instead; local roots use
    ``StageStore.writing`` unchanged (one rename).
    """

    @contextmanager
    def writing(self, stage: str, digest: str) -> Iterator[str]:
        """Same contract as ``StageStore.writing``."""
        if is_local(self.fs):
            with super().writing(stage, digest) as tmp:
                yield tmp
            return
        final = self.path(stage, digest)
        tmp = self.path(stage, f".tmp-{digest[:16]}-{uuid.uuid4().hex[:8]}")
        try:
            yield tmp
            if self.fs.exists(final):  # an unfinished earlier attempt (no result.json): replace it
                self.fs.rm(final, recursive=True)
            move_tree(self.fs, tmp, final)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp, recursive=True)


def open_store(cfg: PipelineConfig) -> DataStore:
    """The stage store of ``cfg.storage.root``, checked reachable now rather than half-way through a stage."""
    root = cfg.storage.root
    store = DataStore(root)
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

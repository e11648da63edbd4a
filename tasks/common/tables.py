"""Parquet on any fsspec filesystem: what the data stages read and write."""

from __future__ import annotations

from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.common.digests import fs_of


def read_parquet(uri: str, **kwargs: Any) -> pa.Table:
    """Read a Parquet file from any fsspec URI."""
    fs, path = fs_of(uri)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, **kwargs)


def write_parquet(table: pa.Table, fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Write a Parquet file (zstd) to ``path`` on ``fs``."""
    with fs.open(path, "wb") as f:
        pq.write_table(table, f, compression="zstd")

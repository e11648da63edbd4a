"""The Parquet parts of LAION-style metadata: a file, or a folder, glob or ``s3://`` prefix of ``part-*.parquet``.

Shared by the source stage (which tells metadata from an image set and snapshots the parts) and the select stage
(which reads the snapshot part by part). Parts are ordered by name, so rows have one global order whatever the part
boundaries.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from franca_core.data.laion_schemas import MetadataError, find_column
from tasks.common.digests import fs_of, glob_base, has_magic, is_remote


def parts_base(uri: str) -> str:
    """The folder parts are named relative to: the folder itself, or a glob's folder before its first wildcard."""
    path = fs_of(uri)[1]
    if not has_magic(path):
        return path.rstrip("/")
    return glob_base(path)


def list_parts(uri: str) -> list[str]:
    """The Parquet parts of a folder, glob or ``s3://`` prefix, sorted by name (hidden ``.``/``_`` names skipped);
    ``[uri]`` for a file. Remote parts keep their protocol."""
    fs, path = fs_of(uri)
    if not has_magic(path) and not fs.isdir(path):
        return [uri]
    found = fs.glob(path) if has_magic(path) else fs.find(path)
    parts = sorted(p for p in found if p.endswith(".parquet") and not posixpath.basename(p).startswith((".", "_"))
                   and not fs.isdir(p))
    return [fs.unstrip_protocol(p) if is_remote(uri) else p for p in parts]


def _url_column(uri: str, columns: Mapping[str, str]) -> bool:
    """True for a Parquet with a URL column, False for one with an ``image`` column (an image set).

    Raises:
        MetadataError: not Parquet, or neither column.
    """
    fs, path = fs_of(uri)
    try:
        with fs.open(path, "rb") as f:
            names = pq.read_schema(f).names
    except (pa.ArrowInvalid, OSError) as exc:
        raise MetadataError(f"data.source {uri!r} is not a readable Parquet file: {exc}") from exc
    if find_column(names, "url", columns) is None and "image" not in names:
        raise MetadataError(f"data.source {uri!r} has no URL column (url, URL or data.columns.url: metadata) and no "
                            f"'image' column (an image set); it has {names}")
    return find_column(names, "url", columns) is not None


def is_metadata(uri: str, columns: Mapping[str, str] | None = None) -> bool:
    """True for metadata (a Parquet, or a folder / glob of parts, with a URL column), False for an image set."""
    fs, path = fs_of(uri)
    if has_magic(path):
        parts = list_parts(uri)
        if not parts:
            raise FileNotFoundError(f"data.source {uri!r} matches no Parquet part")
        return _url_column(parts[0], columns or {})
    if not fs.exists(path):
        raise FileNotFoundError(f"data.source {uri!r} does not exist (valid: 'synthetic', a metadata Parquet or a "
                                f"folder / glob of its parts, an image Parquet or an image folder)")
    if fs.isdir(path):
        parts = list_parts(uri)
        return bool(parts) and _url_column(parts[0], columns or {})
    return _url_column(uri, columns or {})

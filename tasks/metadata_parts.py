"""The Parquet parts of LAION-style metadata: a file, or a folder, glob or ``s3://`` prefix of ``part-*.parquet``.

Shared by the source stage (which snapshots the parts) and the select stage (which reads the snapshot part by part).
Parts are ordered by name, so rows have one global order whatever the part boundaries.
"""

from __future__ import annotations

import posixpath

from tasks.common.digests import fs_of, is_remote


def has_magic(path: str) -> bool:
    """True for a glob pattern."""
    return any(c in path for c in "*?[")


def parts_base(uri: str) -> str:
    """The folder parts are named relative to: the folder itself, or a glob's folder before its first wildcard."""
    path = fs_of(uri)[1]
    if not has_magic(path):
        return path.rstrip("/")
    return path[: min(path.index(c) for c in "*?[" if c in path)].rsplit("/", 1)[0]


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

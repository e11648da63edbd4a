"""sha256 of stage outputs on any fsspec filesystem: what ``outputs.json`` records and ``franca lineage --verify``
recomputes."""

from __future__ import annotations

import hashlib
from typing import Any

import fsspec

from tasks.storage import sha256_json


def fs_of(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of a local path or URI."""
    return fsspec.core.url_to_fs(uri)


def uri_digest(uri: str, limit_bytes: int | None = None) -> dict[str, Any]:
    """sha256 of a file, or of the sorted ``(relative path, sha256)`` list of a folder; size-only above the limit.

    Raises:
        FileNotFoundError: nothing at ``uri``.
    """
    fs, path = fs_of(uri)
    if fs.isdir(path):
        files = sorted(p for p in fs.find(path) if not fs.isdir(p))
        parts = [(p[len(path):].lstrip("/"), uri_digest(fs.unstrip_protocol(p) if "://" in uri else p, limit_bytes))
                 for p in files]
        return {"kind": "dir", "sha256": sha256_json([(n, d.get("sha256"), d["bytes"]) for n, d in parts]),
                "bytes": sum(d["bytes"] for _, d in parts), "files": len(parts)}
    size = int(fs.size(path))
    if limit_bytes is not None and size > limit_bytes:
        return {"kind": "file", "sha256": None, "bytes": size}  # too big to hash on every run: size only
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"kind": "file", "sha256": h.hexdigest(), "bytes": size}

"""Content digests of files and folders on any fsspec filesystem (local path or s3://), remembered between runs.

The one implementation of "hash a file" (``sha256_file``) and of "is this path remote" (``is_remote``). A file a
config names enters a stage's key by ``content_digest``: the sha256 of its bytes (of a folder: of its sorted
``(relative path, sha256)`` list). Hashing a 10 GB file on every run would make every run slow, so each file's
sha256 is remembered in a small SQLite table (``DigestMemo``) under the identity of that version of the file:
``(path, size, mtime_ns, ctime_ns, inode)`` locally (an in-place rewrite changes ctime even when mtime and size are
restored), ``(uri, size, ETag, version id)`` on S3. Any change of identity means hashing again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import fsspec

BLOCK = 1 << 20


def fs_of(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and protocol-less path of a local path or URI."""
    return fsspec.core.url_to_fs(uri)


def is_local_fs(fs: fsspec.AbstractFileSystem) -> bool:
    """True for fsspec's local filesystem."""
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def is_remote(uri: str) -> bool:
    """True for a URI on a remote filesystem (``s3://...``), False for a local path or ``file://`` URI."""
    return "://" in uri and not is_local_fs(fs_of(uri)[0])


def sha256_json(data: Any) -> str:
    """sha256 of canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def sha256_file(uri: str) -> str:
    """sha256 of a file's bytes, streamed.

    Raises:
        FileNotFoundError: nothing at ``uri``.
    """
    fs, path = fs_of(uri)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def default_memo_path() -> Path:
    """``$FRANCA_DIGEST_CACHE``, else ``$XDG_CACHE_HOME/franca/file-digests.sqlite`` (``~/.cache`` by default)."""
    if os.environ.get("FRANCA_DIGEST_CACHE"):
        return Path(os.environ["FRANCA_DIGEST_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "franca" / "file-digests.sqlite"


class DigestMemo:
    """sha256 of file versions already hashed, keyed by their identity (see the module docstring)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_memo_path()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS digests (identity TEXT PRIMARY KEY, sha256 TEXT NOT NULL)")
        return self._db

    def get(self, identity: str) -> str | None:
        with self._lock:
            row = self._conn().execute("SELECT sha256 FROM digests WHERE identity = ?", (identity,)).fetchone()
        return row[0] if row else None

    def put(self, identity: str, sha256: str) -> None:
        with self._lock, self._conn() as db:
            db.execute("INSERT OR REPLACE INTO digests VALUES (?, ?)", (identity, sha256))


def file_identity(fs: fsspec.AbstractFileSystem, path: str, info: dict[str, Any]) -> str | None:
    """What names this version of a file, or None where the filesystem gives nothing reliable."""
    if is_local_fs(fs):
        st = os.stat(path)
        return f"file:{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"
    etag = info.get("ETag") or info.get("etag")
    if not etag:
        return None
    return f"{fs.unstrip_protocol(path)}:{info.get('size')}:{etag}:{info.get('VersionId') or ''}"


def _file_digest(fs: fsspec.AbstractFileSystem, path: str, info: dict[str, Any], memo: DigestMemo | None) -> str:
    identity = file_identity(fs, path, info) if memo is not None else None
    if identity is not None and memo is not None and (known := memo.get(identity)) is not None:
        return known
    sha = sha256_file(fs.unstrip_protocol(path) if not is_local_fs(fs) else path)
    if identity is not None and memo is not None:
        memo.put(identity, sha)
    return sha


def has_magic(path: str) -> bool:
    """True for a glob pattern."""
    return any(c in path for c in "*?[")


def glob_base(path: str) -> str:
    """The folder of a glob before its first wildcard (what its matches are named relative to)."""
    return path[: min(path.index(c) for c in "*?[" if c in path)].rsplit("/", 1)[0]


def content_digest(uri: str, memo: DigestMemo | None = None) -> str:
    """sha256 of a file's bytes, or of the sorted ``(relative path, sha256)`` list of a folder or of a glob's matches
    (relative to the folder before its first wildcard); each file's sha256 remembered in ``memo``.

    Raises:
        FileNotFoundError: nothing at ``uri``, or a glob matching no file (the message names it).
    """
    fs, path = fs_of(uri)
    if has_magic(path):
        found = {p: i for p, i in fs.glob(path, detail=True).items() if i.get("type") != "directory"}
        if not found:
            raise FileNotFoundError(f"{uri!r} matches no file")
        base = glob_base(path)
        return sha256_json({"folder": sorted((p[len(base):].lstrip("/"), _file_digest(fs, p, i, memo))
                                             for p, i in found.items())})
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri!r} does not exist") from None
    if info.get("type") != "directory":
        return _file_digest(fs, path, info, memo)
    base = path.rstrip("/")
    found = fs.find(base, detail=True)
    parts = sorted((p[len(base):].lstrip("/"), _file_digest(fs, p, i, memo)) for p, i in found.items()
                   if i.get("type") != "directory")
    return sha256_json({"folder": parts})


def uri_digest(uri: str, limit_bytes: int | None = None) -> dict[str, Any]:
    """What ``outputs.json`` records of an output: kind, bytes, file count and sha256 (None above ``limit_bytes``).

    Raises:
        FileNotFoundError: nothing at ``uri``.
    """
    fs, path = fs_of(uri)
    if fs.isdir(path):
        files = sorted(p for p in fs.find(path) if not fs.isdir(p))
        parts = [(p[len(path):].lstrip("/"), uri_digest(fs.unstrip_protocol(p) if is_remote(uri) else p, limit_bytes))
                 for p in files]
        return {"kind": "dir", "sha256": sha256_json([(n, d.get("sha256"), d["bytes"]) for n, d in parts]),
                "bytes": sum(d["bytes"] for _, d in parts), "files": len(parts)}
    size = int(fs.size(path))
    if limit_bytes is not None and size > limit_bytes:
        return {"kind": "file", "sha256": None, "bytes": size}  # too big to hash on every run: size only
    return {"kind": "file", "sha256": sha256_file(uri), "bytes": size}


def local_copy(uri: str, folder: Path) -> Path:
    """A local path for ``uri``: itself when local, else a copy under ``folder``."""
    if not is_remote(uri):
        return Path(fs_of(uri)[1])
    fs, path = fs_of(uri)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / Path(path).name
    fs.get(path, str(target), recursive=True)
    return target

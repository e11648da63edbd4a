"""Content-addressed, crash-safe stage outputs on any fsspec filesystem (local path or s3://).

Layout: ``<root>/<stage>/<input_digest>/`` holds a stage's files and, written LAST, ``result.json`` (the serialised
``StageResult``). A folder without ``result.json`` is not an output. Files are written under a temporary sibling
``<root>/<stage>/.tmp-<input_digest>-<uuid>/`` and moved into place (one rename on a local disk; object copies on
S3, which is why the marker goes last), so a crash never leaves something that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import fsspec
from pydantic import BaseModel, Field

RESULT_FILE = "result.json"


class StageResult(BaseModel):
    """What a stage returns and what its ``result.json`` holds."""

    stage: str
    uri: str  # the output folder
    input_digest: str  # sha256 over the stage's config and its inputs' digests: names the folder
    digest: str  # sha256 identity of the output (e.g. the dataset digest)
    stats: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)  # logical name -> URI
    cached: bool = False  # True when returned from an existing output without recomputing


def sha256_json(data: Any) -> str:
    """sha256 of canonical JSON."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local filesystem."""
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def move_tree(fs: fsspec.AbstractFileSystem, src: str, dst: str) -> None:
    """Move a folder: one rename locally; on object stores a copy of its file list, then a delete.

    ``fs.mv(recursive=True)`` on S3 (fsspec 2026.9) also tries to copy the inferred "directories" of a nested tree
    and fails with NoSuchKey, so object stores move the file list instead.
    """
    if is_local(fs):
        fs.mv(src, dst, recursive=True)
        return
    files = fs.find(src)
    fs.copy(files, [dst + f[len(src):] for f in files])
    fs.rm(src, recursive=True)


def input_digest(config: Any, inputs: dict[str, str]) -> str:
    """Digest naming a stage's output folder: its config section and the digests of its inputs."""
    cfg = config.model_dump(mode="json") if isinstance(config, BaseModel) else config
    return sha256_json({"config": cfg, "inputs": inputs})


class StageStore:
    """One root (local path or URI); ``fsspec`` options (e.g. S3 endpoint) pass through ``storage_options``."""

    def __init__(self, root: str, **storage_options: Any) -> None:
        self.root = root.rstrip("/")
        try:
            self.fs, self._base = fsspec.core.url_to_fs(self.root, **storage_options)
        except Exception as exc:
            raise ValueError(f"storage root {root!r} is not usable: {exc}") from exc

    def path(self, stage: str, digest: str) -> str:
        """Filesystem path (no protocol) of a stage output folder."""
        return f"{self._base}/{stage}/{digest}"

    def uri(self, path: str) -> str:
        """Full URI of a filesystem path (with the protocol for remote filesystems)."""
        return self.fs.unstrip_protocol(path) if self.fs.protocol not in ("file", ("file", "local")) else path

    def load(self, stage: str, digest: str) -> StageResult | None:
        """The finished result of a stage with these inputs, or None."""
        marker = f"{self.path(stage, digest)}/{RESULT_FILE}"
        try:
            with self.fs.open(marker, "r") as f:
                return StageResult.model_validate_json(f.read()).model_copy(update={"cached": True})
        except FileNotFoundError:
            return None

    @contextmanager
    def writing(self, stage: str, digest: str) -> Iterator[str]:
        """Yield a temporary folder to write into; on success it becomes ``path(stage, digest)``.

        The caller writes ``result.json`` afterwards with ``publish``.
        """
        final = self.path(stage, digest)
        tmp = f"{self._base}/{stage}/.tmp-{digest[:16]}-{uuid.uuid4().hex[:8]}"
        self.fs.makedirs(tmp, exist_ok=True)
        try:
            yield tmp
            if self.fs.exists(final):  # an unfinished earlier attempt (no result.json): replace it
                self.fs.rm(final, recursive=True)
            move_tree(self.fs, tmp, final)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp, recursive=True)

    def publish(self, result: StageResult) -> StageResult:
        """Write ``result.json`` last: from now on the output is complete."""
        with self.fs.open(f"{self.path(result.stage, result.input_digest)}/{RESULT_FILE}", "w") as f:
            f.write(result.model_dump_json(indent=1))
        return result

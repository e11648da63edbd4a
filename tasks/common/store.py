"""Content-addressed, crash-safe stage outputs on any fsspec filesystem (local path or s3://).

Layout: ``<root>/<stage>/<digest>/`` holds one stage output, ``digest`` being the stage's key (``contract.Stage.key``),
and, written LAST, ``result.json``: the ``StageResult`` with the MLflow run that computed it and the size of every
file it lists. A folder whose ``result.json`` is missing or does not parse is unfinished, never an output. Files are
written under a temporary sibling ``<root>/<stage>/.tmp-<digest>-<uuid>/`` and moved into place; the marker itself is
written under a temporary name and renamed (on S3 a single PUT, which is atomic). Whoever writes an output holds the
stage's lock (``locks.stage_lock``), so a move never lands on top of another run's output.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import fsspec
from pydantic import BaseModel, Field, ValidationError

from tasks.common.digests import fs_of, is_local_fs, is_remote
from tasks.common.redact import redact

RESULT_FILE = "result.json"


class StorageError(ValueError):
    """The storage root cannot be used (unreachable endpoint, missing bucket, not writable)."""


class StageResult(BaseModel):
    """What a stage returns and what its ``result.json`` holds."""

    stage: str
    uri: str  # the output folder
    input_digest: str  # the stage's key (contract.Stage.key): names the folder
    digest: str  # sha256 identity of the output (e.g. the dataset digest)
    stats: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict)  # logical name -> URI
    cached: bool = False  # True when served from an existing output without recomputing
    run_id: str = ""  # the MLflow run that computed it ("" when run without tracking)
    sizes: dict[str, int] = Field(default_factory=dict)  # bytes of each of its own files (folders: their total)
    recipe: dict[str, Any] = Field(default_factory=dict)  # what the key hashed: config, file and code digests


def move_tree(fs: fsspec.AbstractFileSystem, src: str, dst: str) -> None:
    """Move a folder: one rename locally; on object stores a copy of its file list, then a delete.

    ``fs.mv(recursive=True)`` on S3 (fsspec 2026.9) also tries to copy the inferred "directories" of a nested tree
    and fails with NoSuchKey, so object stores move the file list instead.
    """
    if is_local_fs(fs):
        os.replace(src, dst)  # a rename: fails rather than nesting src inside an existing dst
        return
    fs.invalidate_cache(src)  # written by another process (e.g. img2dataset's): a cached listing would drop files
    files = fs.find(src)
    fs.copy(files, [dst + f[len(src):] for f in files])
    fs.rm(src, recursive=True)


class StageStore:
    """One root (local path or URI); ``fsspec`` options (e.g. S3 endpoint) pass through ``storage_options``."""

    def __init__(self, root: str, **storage_options: Any) -> None:
        self.root = root.rstrip("/")
        try:
            self.fs, self.base = fsspec.core.url_to_fs(self.root, **storage_options)
        except Exception as exc:
            raise StorageError(redact(f"storage root {root!r} is not usable: {type(exc).__name__}")) from None
        self.local = is_local_fs(self.fs)

    def path(self, stage: str, digest: str) -> str:
        """Filesystem path (no protocol) of a stage output folder."""
        return f"{self.base}/{stage}/{digest}"

    def uri(self, path: str) -> str:
        """Full URI of a filesystem path (with the protocol for remote filesystems)."""
        return path if self.local else self.fs.unstrip_protocol(path)

    def load(self, stage: str, digest: str) -> StageResult | None:
        """The marker of this output, or None when it is missing or does not parse (an unfinished output)."""
        try:
            with self.fs.open(f"{self.path(stage, digest)}/{RESULT_FILE}", "r") as f:
                text = f.read()
            return StageResult.model_validate_json(text)
        except (FileNotFoundError, ValidationError, UnicodeDecodeError, ValueError):
            return None

    def publish(self, result: StageResult) -> StageResult:
        """Write ``result.json`` last, atomically: from now on the output is complete."""
        marker = f"{self.path(result.stage, result.input_digest)}/{RESULT_FILE}"
        body = result.model_copy(update={"cached": False}).model_dump_json(indent=1)
        self.fs.makedirs(posixpath.dirname(marker), exist_ok=True)
        if self.local:
            tmp = f"{marker}.{uuid.uuid4().hex[:8]}.tmp"
            with open(tmp, "w") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, marker)
        else:
            self.fs.pipe_file(marker, body.encode())  # one PUT: the object appears whole or not at all
        return result

    def unpublish(self, stage: str, digest: str) -> None:
        """Remove a marker that failed its check, so the output reads as unfinished until it is redone."""
        marker = f"{self.path(stage, digest)}/{RESULT_FILE}"
        if self.fs.exists(marker):
            self.fs.rm(marker)

    @contextmanager
    def writing(self, stage: str, digest: str) -> Iterator[str]:
        """Yield a temporary folder to write into; on success it replaces ``path(stage, digest)``.

        The caller holds the stage's lock and has found no valid output there, so whatever is there is an
        unfinished earlier attempt and is replaced. The marker is written afterwards by ``publish``.
        """
        final = self.path(stage, digest)
        tmp = f"{self.base}/{stage}/.tmp-{digest[:16]}-{uuid.uuid4().hex[:8]}"
        self.fs.makedirs(tmp, exist_ok=True)
        try:
            yield tmp
            if self.fs.exists(final):
                self.fs.rm(final, recursive=True)
            move_tree(self.fs, tmp, final)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp, recursive=True)

    def scratch(self, stage: str, digest: str, name: str) -> str:
        """A folder kept across attempts of one (stage, digest) for resumable work (e.g. a partial download)."""
        return f"{self.base}/{stage}/.work-{digest[:16]}/{name}"

    def own_files(self, result: StageResult) -> dict[str, str]:
        """``{name: path}`` of the files a result lists inside its own folder (not pointers upstream)."""
        prefix = result.uri.rstrip("/") + "/"
        return {k: fs_of(v)[1] for k, v in result.files.items() if v.startswith(prefix)}

    def sizes(self, result: StageResult) -> dict[str, int]:
        """Bytes of each of the result's own files (a folder: the total of its files)."""
        return {k: int(self.fs.du(p, total=True)) for k, p in self.own_files(result).items()}

    def problem(self, result: StageResult) -> str | None:
        """Why an output cannot be served (a listed file missing or of another size), or None when it can."""
        for name, path in self.own_files(result).items():
            if not self.fs.exists(path):
                return f"its file {name!r} ({posixpath.basename(path)}) is gone"
            size = int(self.fs.du(path, total=True))
            if name in result.sizes and size != result.sizes[name]:
                return f"its file {name!r} has {size} bytes, {result.sizes[name]} were recorded"
        return None


def open_store(root: str) -> StageStore:
    """The one way to open the store: checked reachable now rather than half-way through a stage."""
    store = StageStore(root)
    try:
        if store.local:
            store.fs.makedirs(store.base, exist_ok=True)
        else:  # remote: the bucket must exist (creating buckets is an operator's decision)
            store.fs.info(store.base.split("/", 1)[0])  # raises, unlike exists() (False for a dead endpoint)
    except Exception as exc:  # botocore / OSError / aiohttp errors all mean the same thing here
        # botocore's text may echo the endpoint, the request or pieces of the root (a bucket name `KEY:SECRET-PART`):
        # redacted, and not chained to the original exception, whose text a traceback would print unredacted.
        text = f"storage root {root!r} is unreachable or unusable: {type(exc).__name__}: {exc}"
        raise StorageError(redact(text, known=root)) from None
    return store


@dataclass
class Workspace:
    """Where one execution of a stage writes, and the MLflow run it logs into (given to the stage function)."""

    store: StageStore
    stage: str
    digest: str
    run_id: str = ""
    parent_run_id: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)  # what the key hashed (contract.StageKey.parts)

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        return self.store.fs

    @property
    def path(self) -> str:
        """The final output folder (no protocol)."""
        return self.store.path(self.stage, self.digest)

    def uri(self, rel: str = "") -> str:
        """URI of the output folder, or of ``rel`` inside it."""
        return self.store.uri(f"{self.path}/{rel}" if rel else self.path)

    def writing(self) -> Any:
        """``StageStore.writing`` for this output: a temporary folder that becomes the output on success."""
        return self.store.writing(self.stage, self.digest)

    def scratch(self, name: str) -> str:
        """A folder kept across attempts (see ``StageStore.scratch``); removed when the output is published."""
        return self.store.scratch(self.stage, self.digest, name)

    def result(self, digest: str, files: Mapping[str, str], stats: Mapping[str, Any] | None = None) -> StageResult:
        """The stage's result; ``files`` values without a protocol or leading ``/`` are relative to the output."""
        resolved = {k: v if (is_remote(v) or v.startswith("/")) else self.uri(v) for k, v in files.items()}
        return StageResult(stage=self.stage, uri=self.uri(), input_digest=self.digest, digest=digest,
                           stats=dict(stats or {}), files=resolved, run_id=self.run_id)

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
from dataclasses import dataclass, field
from typing import Any, Self

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from franca_core.data.download_causes import download_cause

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")


def finished_shards(fs: AbstractFileSystem, folder: str) -> list[str]:
    """Shard ids (``"00000"``, ...) whose ``_stats.json`` exists, sorted."""
    fs.invalidate_cache(folder)  # another process wrote them: an object store's cached listing would miss some
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


class BadShardError(ValueError):
    """A tar shard, or one of its samples, cannot be read (``iter_tar`` without a ``TarDamage`` to record it in)."""


@dataclass
class TarDamage:
    """What could not be read of one tar shard.

    Attributes:
        shard: the tar's path or URI.
        error: why the tar stops being readable (not a tar, empty file, truncated); ``""`` if it read to its end.
        bad_members: ``(sample key, why)`` of each skipped sample: a JSON member that is not a JSON object, or
            the sample the tar was cut in.
        samples: readable samples yielded.
    """

    shard: str
    error: str = ""
    bad_members: list[tuple[str, str]] = field(default_factory=list)
    samples: int = 0

    def __bool__(self) -> bool:
        return bool(self.error or self.bad_members)

    def describe(self) -> str:
        """One line: the shard, its error and its first bad members."""
        parts = [self.error] if self.error else []
        parts += [f"{name}: {why}" for name, why in self.bad_members[:3]]
        more = len(self.bad_members) - 3
        return f"{self.shard}: " + "; ".join(parts) + (f" (and {more} more bad members)" if more > 0 else "")


def _end_recording_tarinfo(ends: list[Exception]) -> type[tarfile.TarInfo]:
    """A ``TarInfo`` class that records why header reading stopped.

    ``tarfile`` ends iteration silently on a missing, cut or invalid header past the first member, so a tar cut at a
    member boundary would read as complete; only a zero block (``EOFHeaderError``) is a real end of archive.
    """

    class EndRecording(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tar: tarfile.TarFile) -> Self:  # noqa: D102
            try:
                return super().fromtarfile(tar)
            except Exception as exc:
                ends.append(exc)
                raise

    return EndRecording


def _json_object(body: bytes) -> dict[str, Any]:
    """A JSON member's object; ``ValueError`` if it is not UTF-8 JSON holding an object."""
    meta = json.loads(body)
    if not isinstance(meta, dict):
        raise ValueError(f"JSON member holds a {type(meta).__name__}, not an object")
    return meta


def _read_tar(fs: AbstractFileSystem, path: str, damage: TarDamage) -> Iterator[tuple[str, bytes, dict[str, Any]]]:
    """``iter_tar``'s reading: yields the readable samples, records the rest in ``damage``."""
    key: str | None = None
    image: bytes | None = None
    meta: dict[str, Any] = {}
    bad = ""  # why the pending sample ``key`` is skipped
    ends: list[Exception] = []
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|", tarinfo=_end_recording_tarinfo(ends)) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                stem, _, suffix = member.name.rpartition("/")[-1].partition(".")
                if stem != key:
                    if key is not None and bad:
                        damage.bad_members.append((key, bad))
                    elif key is not None and image is not None:
                        damage.samples += 1
                        yield key, image, meta
                    key, image, meta, bad = stem, None, {}, ""
                body = tar.extractfile(member).read()  # type: ignore[union-attr]
                if suffix in IMAGE_SUFFIXES:
                    image = body
                elif suffix == "json":
                    try:
                        meta = _json_object(body)
                    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError included
                        bad = f"bad JSON member {member.name}: {exc}"
        if ends and type(ends[-1]).__name__ != "EOFHeaderError":  # not a zero block: the tar was cut or garbled
            raise tarfile.ReadError(f"no end-of-archive marker ({ends[-1]})")
    except tarfile.TarError as exc:
        damage.error = f"{type(exc).__name__}: {exc}"
        if key is not None:  # the sample being read when the tar broke may be incomplete
            damage.bad_members.append((key, bad or f"cut by {damage.error}"))
        return
    if key is not None and bad:
        damage.bad_members.append((key, bad))
    elif key is not None and image is not None:
        damage.samples += 1
        yield key, image, meta


def iter_tar(fs: AbstractFileSystem, path: str,
             damage: TarDamage | None = None) -> Iterator[tuple[str, bytes, dict[str, Any]]]:
    """Yield ``(key, image bytes, json metadata)`` per sample of one webdataset tar, streaming.

    A damaged tar yields what is readable: a truncated or garbled tar, the samples before the damage (the sample being
    read when the tar ended early is skipped: it may be incomplete); a sample whose JSON member is not a JSON object
    is skipped. A valid tar with no member (img2dataset's shard whose URLs all failed) is not damaged. With
    ``damage`` given, what was skipped is recorded there; without it, ``BadShardError`` is raised (after the
    readable samples before it were yielded).

    Args:
        fs: the filesystem holding the tar.
        path: the tar's path on ``fs``.
        damage: where to record damage instead of raising, for callers that skip bad shards.

    Raises:
        BadShardError: without ``damage``, on the first damage (the tar or a sample unreadable).
    """
    record = damage if damage is not None else TarDamage(path)
    for sample in _read_tar(fs, path, record):
        if damage is None and record:
            break
        yield sample
    if damage is None and record:
        raise BadShardError(record.describe())

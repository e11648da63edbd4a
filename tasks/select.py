"""Stage 1 (select): LAION-style metadata (one Parquet or its parts) -> filtered, deterministically sampled subset.

The parts are read one at a time, a row group's batch at a time (``franca_core/data/laion.py``: filters, URL dedup
and hash-rank sampling with Arrow compute; the rules and counts are described there), so memory is one batch plus
the rows that can still be chosen. Output ``<root>/select/<key>/subset.parquet`` (our column names, rows in the
metadata's order); the result's digest is its sha256. Corpus URLs (``corpus.PLACEHOLDER``) are resolved against the
source's ``files["source_root"]``, passed on to the download stage.
"""

from __future__ import annotations

import itertools
import logging
import posixpath
from collections.abc import Mapping

import pyarrow as pa

from franca_core.config import PipelineConfig, SelectConfig
from franca_core.data.laion import Selector, SlackExceeded
from franca_core.data.laion_schemas import MetadataError, read_chunks
from tasks.common.contract import stage
from tasks.common.digests import fs_of, sha256_file
from tasks.common.store import StageResult, Workspace
from tasks.common.tables import write_parquet
from tasks.metadata_parts import list_parts, parts_base

log = logging.getLogger("franca.select")


def _feed(sel: Selector, uri: str, where: str, columns: Mapping[str, str]) -> None:
    fs, path = fs_of(uri)
    try:
        with fs.open(path, "rb") as f:
            for chunk, sources in read_chunks(f, columns, where):
                sel.add(chunk, where, sources)
    except FileNotFoundError as exc:
        raise MetadataError(f"metadata Parquet {where!r} does not exist") from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise MetadataError(f"metadata {where!r} is not a readable Parquet file: {exc}") from exc


def select_parts(uri: str, cfg: SelectConfig, columns: Mapping[str, str],
                 original: str | None = None) -> tuple[pa.Table, dict[str, object]]:
    """Select from a metadata Parquet or a folder / glob of parts; errors name the part as ``original`` holds it.

    Raises:
        MetadataError: a part missing, unreadable, without a URL column or with a column of the wrong type, or no
            rows at all.
    """
    parts = list_parts(uri)
    base, named = parts_base(uri), parts_base(original) if original else None
    slack: int | None = None
    for passes in itertools.count(1):
        sel = Selector(cfg, slack)
        for part in parts:
            rel = fs_of(part)[1][len(base):].lstrip("/")
            where = (original or uri) if parts == [uri] else posixpath.join(named or base, rel)
            _feed(sel, part, where, columns)
        if sel.rows_in == 0:
            raise MetadataError(f"metadata {original or uri} holds no rows ({len(parts)} part(s))")
        try:
            subset, stats = sel.finish()
        except SlackExceeded as exc:  # many repeated URLs among the first rows: once more, keeping more rows
            log.info("select: %s; reading the metadata again with 4x the slack", exc)
            slack = 4 * (sel.kept.keep or 0)
            continue
        return subset, {**stats, "parts": len(parts), "passes": passes}
    raise AssertionError("unreachable")


@stage("select", reads=("data.select", "data.columns"), inputs=("urls",))
def select(cfg: PipelineConfig, ws: Workspace, urls: StageResult) -> StageResult:
    """Filter, dedup and sample the source's metadata with ``cfg.data.select`` (columns: ``cfg.data.columns``).

    Raises:
        MetadataError: missing or unreadable parts, no URL column, a column of the wrong type, no rows, or no row
            passing the filters (the message says which file and column, or which rules).
    """
    metadata_uri = urls.files["metadata"]
    original = urls.files.get("original")
    columns = {str(ours): theirs for ours, theirs in cfg.data.columns.items()}
    subset, stats = select_parts(metadata_uri, cfg.data.select, columns, original)
    if not subset.num_rows:
        dropped = {k[len("filtered_"):]: v for k, v in stats.items() if k.startswith("filtered_") and v}
        raise MetadataError(f"no row of {original or metadata_uri!r} passes the select filters "
                            f"({stats['rows_in']} rows; dropped by rule: {dropped})")
    with ws.writing() as tmp:
        write_parquet(subset, ws.fs, f"{tmp}/subset.parquet")
    source_root = urls.files.get("source_root", posixpath.dirname(metadata_uri))
    return ws.result(sha256_file(ws.uri("subset.parquet")),
                     {"subset": "subset.parquet", "metadata": metadata_uri, "source_root": source_root}, stats)

"""Stage 1 (select): LAION-style metadata Parquet -> filtered, deterministically sampled subset Parquet.

Output ``<root>/select/<input-digest>/subset.parquet``; the input digest covers ``data.select`` and the sha256 of the
metadata file, the result's digest is the sha256 of ``subset.parquet``. Corpus URLs (``corpus.PLACEHOLDER``) are
resolved against the metadata's folder, recorded as ``files["source_root"]`` for the download stage.
"""

from __future__ import annotations

import posixpath

import pyarrow as pa

from franca_core.config import PipelineConfig
from franca_core.data.laion import LAION_COLUMNS, MetadataError, filter_rows, normalise, sample_rows
from tasks.data_io import open_store, read_parquet, sha256_uri, write_parquet
from tasks.storage import StageResult, input_digest


def _read_metadata(uri: str) -> pa.Table:
    try:
        return read_parquet(uri)
    except FileNotFoundError as exc:
        raise MetadataError(f"metadata Parquet {uri!r} does not exist") from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise MetadataError(f"metadata {uri!r} is not a readable Parquet file: {exc}") from exc


def select_subset(cfg: PipelineConfig, metadata_uri: str) -> StageResult:
    """Filter and sample ``metadata_uri`` with ``cfg.data.select``; a no-op when already done for these inputs.

    Raises:
        MetadataError: missing file or columns, no rows, or no row passing the filters (the message says which).
    """
    store = open_store(cfg)
    try:
        meta_digest = sha256_uri(metadata_uri)
    except FileNotFoundError as exc:
        raise MetadataError(f"metadata Parquet {metadata_uri!r} does not exist") from exc
    digest = input_digest(cfg.data.select, {"metadata": meta_digest})
    if (done := store.load("select", digest)) is not None:
        return done
    table = normalise(_read_metadata(metadata_uri), metadata_uri)
    keep, dropped = filter_rows(table, cfg.data.select)
    if not keep.any():
        raise MetadataError(f"no row of {metadata_uri!r} passes the select filters ({table.num_rows} rows; "
                            f"dropped by rule: { {k: v for k, v in dropped.items() if v} })")
    passing = table.filter(pa.array(keep))
    subset = sample_rows(passing, cfg.data.select.target_count, cfg.data.select.seed)
    columns = [c for c in LAION_COLUMNS if c in subset.column_names]
    subset = subset.select(columns + [c for c in subset.column_names if c not in columns])
    with store.writing("select", digest) as tmp:
        write_parquet(subset, store.fs, f"{tmp}/subset.parquet")
    final = store.path("select", digest)
    subset_uri = store.uri(f"{final}/subset.parquet")
    stats = {"rows_in": table.num_rows, "filtered": int(sum(dropped.values())),
             **{f"filtered_{k}": v for k, v in dropped.items()},
             "not_sampled": passing.num_rows - subset.num_rows, "selected": subset.num_rows}
    return store.publish(StageResult(
        stage="select", uri=store.uri(final), input_digest=digest, digest=sha256_uri(subset_uri), stats=stats,
        files={"subset": subset_uri, "metadata": metadata_uri, "source_root": posixpath.dirname(metadata_uri)}))


def select(cfg: PipelineConfig, source: StageResult) -> StageResult:
    """``select_subset`` on the metadata Parquet of a source stage's result."""
    return select_subset(cfg, source.files["metadata"])

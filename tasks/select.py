"""Stage 1 (select): LAION-style metadata Parquet -> filtered, deterministically sampled subset Parquet.

Output ``<root>/select/<key>/subset.parquet``; the result's digest is its sha256. Corpus URLs (``corpus.PLACEHOLDER``)
are resolved against the source's ``files["source_root"]``, passed on to the download stage.
"""

from __future__ import annotations

import posixpath

import pyarrow as pa

from franca_core.config import PipelineConfig
from franca_core.data.laion import LAION_COLUMNS, MetadataError, filter_rows, normalise, sample_rows
from tasks.common.contract import stage
from tasks.common.digests import sha256_file
from tasks.common.store import StageResult, Workspace
from tasks.common.tables import read_parquet, write_parquet


def _read_metadata(uri: str) -> pa.Table:
    try:
        return read_parquet(uri)
    except FileNotFoundError as exc:
        raise MetadataError(f"metadata Parquet {uri!r} does not exist") from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise MetadataError(f"metadata {uri!r} is not a readable Parquet file: {exc}") from exc


@stage("select", reads=("data.select",), inputs=("urls",))
def select(cfg: PipelineConfig, ws: Workspace, urls: StageResult) -> StageResult:
    """Filter and sample the source's metadata Parquet with ``cfg.data.select``.

    Raises:
        MetadataError: missing file or columns, no rows, or no row passing the filters (the message says which).
    """
    metadata_uri = urls.files["metadata"]
    table = normalise(_read_metadata(metadata_uri), metadata_uri)
    keep, dropped = filter_rows(table, cfg.data.select)
    if not keep.any():
        raise MetadataError(f"no row of {metadata_uri!r} passes the select filters ({table.num_rows} rows; "
                            f"dropped by rule: { {k: v for k, v in dropped.items() if v} })")
    passing = table.filter(pa.array(keep))
    subset = sample_rows(passing, cfg.data.select.target_count, cfg.data.select.seed)
    columns = [c for c in LAION_COLUMNS if c in subset.column_names]
    subset = subset.select(columns + [c for c in subset.column_names if c not in columns])
    with ws.writing() as tmp:
        write_parquet(subset, ws.fs, f"{tmp}/subset.parquet")
    stats = {"rows_in": table.num_rows, "filtered": int(sum(dropped.values())),
             **{f"filtered_{k}": v for k, v in dropped.items()},
             "not_sampled": passing.num_rows - subset.num_rows, "selected": subset.num_rows}
    source_root = urls.files.get("source_root", posixpath.dirname(metadata_uri))
    return ws.result(sha256_file(ws.uri("subset.parquet")),
                     {"subset": "subset.parquet", "metadata": metadata_uri, "source_root": source_root}, stats)

"""The metadata each sample keeps in the dedup manifest: caption, URL, CLIP similarity, license, original size.

A sample's metadata can come from several places, each holding some of the columns: the select subset (the
metadata as published: URL, caption, similarity, license), the sample's JSON member in its shard (what img2dataset
recorded: caption, the URL it fetched, original width/height, plus any column passed through) and the download's
``samples.parquet``. ``merge_metadata`` takes, per column, the first non-null value in the order the sources are
given; a column no source has is null. Columns are matched by sample id with ``pyarrow.compute.index_in`` (no
per-row Python).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SAMPLE_METADATA = pa.schema([
    ("caption", pa.string()), ("url", pa.string()), ("similarity", pa.float64()), ("license", pa.string()),
    ("original_width", pa.int32()), ("original_height", pa.int32())])
_INT32 = (-(2**31), 2**31 - 1)


def json_value(value: Any, kind: pa.DataType) -> Any:
    """``value`` from a JSON member if it fits the Arrow type ``kind``, else ``None`` (a wrong type is not fatal)."""
    if value is None or isinstance(value, bool):
        return None
    if pa.types.is_string(kind):
        return value if isinstance(value, str) else None
    if pa.types.is_floating(kind):
        return float(value) if isinstance(value, int | float) else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and _INT32[0] <= value <= _INT32[1] else None


def json_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The ``SAMPLE_METADATA`` fields of one sample's JSON member (``None`` where absent or of the wrong type)."""
    return {f.name: json_value(meta.get(f.name), f.type) for f in SAMPLE_METADATA}


def merge_metadata(sample_ids: Sequence[str], sources: Mapping[str, pa.Table]) -> pa.Table:
    """``SAMPLE_METADATA`` columns for ``sample_ids``: per column, the first non-null value among ``sources``.

    Args:
        sample_ids: the rows wanted, in order.
        sources: name -> table with a ``sample_id`` column and any of the ``SAMPLE_METADATA`` columns, in order of
            precedence; a sample id repeated in one source takes its first row.

    Raises:
        ValueError: a source's column cannot be cast to its ``SAMPLE_METADATA`` type (names source and column).
    """
    ids = pa.array(sample_ids, pa.string())
    rows = {name: pc.index_in(ids, value_set=table.column("sample_id").cast(pa.string()))
            for name, table in sources.items() if "sample_id" in table.column_names}
    columns = []
    for field in SAMPLE_METADATA:
        found = []
        for name, where in rows.items():
            if field.name not in sources[name].column_names:
                continue
            try:
                column = sources[name].column(field.name).cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                found_type = sources[name].schema.field(field.name).type
                raise ValueError(f"metadata column {field.name!r} of {name} ({found_type}) cannot be read as "
                                 f"{field.type}: {exc}") from exc
            found.append(column.take(where))
        columns.append(pc.coalesce(*found) if found else pa.nulls(len(ids), field.type))
    return pa.table(columns, schema=SAMPLE_METADATA)


def read_metadata(uri: str) -> pa.Table:
    """``sample_id`` and whichever ``SAMPLE_METADATA`` columns a Parquet file (path or fsspec URI) has."""
    fs, path = fsspec.core.url_to_fs(uri)
    with fs.open(path, "rb") as f:
        table = pq.ParquetFile(f)
        return table.read(columns=[n for n in ("sample_id", *SAMPLE_METADATA.names) if n in table.schema_arrow.names])

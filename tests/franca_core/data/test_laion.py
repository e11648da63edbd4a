"""LAION metadata validation, filters and sampling (franca_core/data/laion.py)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from franca_core.config import SelectConfig
from franca_core.data.laion import MetadataError, filter_rows, normalise, sample_rows


def _table(n: int = 6, **override: list) -> pa.Table:
    cols = {"URL": [f"http://x/{i}.jpg" for i in range(n)], "TEXT": ["a cat"] * n, "WIDTH": [64] * n,
            "HEIGHT": [64] * n, "similarity": [0.35] * n, "punsafe": [0.1] * n, "pwatermark": [0.2] * n}
    cols.update(override)
    return pa.table(cols)


def test_normalise__renames_laion_upper_case_and_adds_sample_ids() -> None:
    t = normalise(_table(), "m.parquet")
    assert {"url", "caption", "width", "height", "sample_id"} <= set(t.column_names)
    assert len(set(t.column("sample_id").to_pylist())) == 6


def test_normalise__missing_column_named() -> None:
    with pytest.raises(MetadataError, match=r"lacks column\(s\) \['similarity'\]"):
        normalise(_table().drop_columns(["similarity"]), "m.parquet")


def test_normalise__empty_table_named() -> None:
    with pytest.raises(MetadataError, match="holds no rows"):
        normalise(_table(0), "m.parquet")


def test_filter_rows__counts_by_first_failing_rule() -> None:
    t = normalise(_table(similarity=[0.35, 0.1, 0.35, 0.35, 0.35, None], punsafe=[0.1, 0.9, 0.9, 0.1, 0.1, 0.1],
                         WIDTH=[64, 64, 64, 10, 200, 64], URL=["u0", "u1", "u2", "u3", "u4", "u0"]), "m")
    keep, counts = filter_rows(t, SelectConfig())
    assert keep.tolist() == [True, False, False, False, False, False]
    assert counts["duplicate_url"] == 1 and counts["min_size"] == 1 and counts["aspect"] == 1
    assert counts["similarity"] == 1 and counts["punsafe"] == 1  # row 1 fails both: counted once, first rule


def test_filter_rows__language_filter_needs_the_column() -> None:
    with pytest.raises(MetadataError, match="language"):
        filter_rows(normalise(_table(), "m"), SelectConfig(languages=["en"]))


def test_sample_rows__independent_of_row_order_and_nested() -> None:
    t = normalise(_table(50), "m")
    a = sample_rows(t, 10, seed=0).column("sample_id").to_pylist()
    b = sample_rows(t.take(pa.array(list(range(49, -1, -1)))), 10, seed=0).column("sample_id").to_pylist()
    assert a == b == sorted(a)
    assert set(a) <= set(sample_rows(t, 20, seed=0).column("sample_id").to_pylist())
    assert a != sample_rows(t, 10, seed=1).column("sample_id").to_pylist()

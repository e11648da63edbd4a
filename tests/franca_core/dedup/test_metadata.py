"""Sample metadata kept in the dedup manifest (franca_core/dedup/metadata.py): precedence, nulls, bad types."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from franca_core.dedup.metadata import SAMPLE_METADATA, json_metadata, merge_metadata, read_metadata


def test_merge_metadata__first_non_null_source_wins_absent_is_null() -> None:
    subset = pa.table({"sample_id": ["a", "b", "b"], "url": ["http://a", None, "http://b-later"],
                       "similarity": pa.array([0.31, 0.29, 0.1], pa.float32())})
    shard_json = pa.table({"sample_id": ["a", "b"], "url": ["http://127.0.0.1/a", "http://127.0.0.1/b"],
                           "original_width": [640, None], "caption": ["cat", "dog"]})
    samples = pa.table({"sample_id": [1, 2], "original_width": [1, 480]})  # an integer id column is matched as text
    got = merge_metadata(["b", "a", "c"], {"subset": subset, "json": shard_json, "samples": samples}).to_pylist()
    assert [r["url"] for r in got] == ["http://127.0.0.1/b", "http://a", None]  # b's first subset row has no URL
    assert [r["caption"] for r in got] == ["dog", "cat", None]
    assert [r["original_width"] for r in got] == [None, 640, None]
    assert got[1]["similarity"] == pytest.approx(0.31) and got[0]["similarity"] == pytest.approx(0.29)
    assert all(r["license"] is None and r["original_height"] is None for r in got)


def test_merge_metadata__no_source_gives_all_null_columns_of_the_schema() -> None:
    table = merge_metadata(["a", "b"], {})
    assert table.schema.equals(SAMPLE_METADATA) and table.num_rows == 2
    assert all(table.column(c).null_count == 2 for c in table.column_names)


def test_merge_metadata__uncastable_column_names_source_and_column() -> None:
    bad = pa.table({"sample_id": ["a"], "similarity": ["high"]})
    with pytest.raises(ValueError, match="'similarity' of the subset \\(string\\)"):
        merge_metadata(["a"], {"the subset": bad})


def test_json_metadata__wrong_types_become_null() -> None:
    got = json_metadata({"caption": 3, "url": "http://x", "similarity": "0.3", "license": None,
                         "original_width": 640.0, "original_height": True, "extra": 1})
    assert got == {"caption": None, "url": "http://x", "similarity": None, "license": None, "original_width": 640,
                   "original_height": None}
    assert json_metadata({"similarity": 1, "original_width": 2**40})["similarity"] == 1.0
    assert json_metadata({"original_width": 2**40})["original_width"] is None


def test_read_metadata__only_the_columns_present(tmp_path: Path) -> None:
    path = tmp_path / "subset.parquet"
    pq.write_table(pa.table({"sample_id": ["a"], "url": ["http://a"], "punsafe": [0.1], "license": ["CC-BY"]}), path)
    assert read_metadata(str(path)).column_names == ["sample_id", "url", "license"]

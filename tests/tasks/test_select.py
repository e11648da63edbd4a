"""Stage 1 (tasks/select.py): filters, sampling, digests, and one clear error per bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from franca_core.data.laion import MetadataError
from tasks.common.runner import run_stage
from tasks.common.store import StageResult, StorageError
from tasks.common.tables import read_parquet


def select_subset(cfg, metadata: str) -> StageResult:
    """The source stage on ``metadata``, then select on its snapshot."""
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": metadata})})
    return run_stage("select", cfg, urls=run_stage("source", cfg))


def _metadata(path: Path, n: int = 10, **override: list) -> str:
    cols = {"url": [f"http://127.0.0.1:9/{i}.jpg" for i in range(n)], "caption": ["a dog"] * n, "width": [64] * n,
            "height": [64] * n, "similarity": [0.4] * n, "punsafe": [0.1] * n, "pwatermark": [0.1] * n}
    cols.update(override)
    pq.write_table(pa.table(cols), path)
    return str(path)


def test_select_subset__filters_planted_rows_and_records_counts(data_run) -> None:
    stats = data_run.subset.stats
    assert stats["rows_in"] == 400 and stats["filtered"] == data_run.source.stats["planted_filtered"] == 8
    assert stats["selected"] == 392 and read_parquet(data_run.subset.files["subset"]).num_rows == 392
    assert data_run.subset.digest != data_run.subset.input_digest


def test_select_subset__rerun_is_a_noop_with_the_same_digest(data_run) -> None:
    again = run_stage("select", data_run.cfg, urls=data_run.source)
    assert again.cached and again.digest == data_run.subset.digest


def test_select_subset__target_count_samples_deterministically(tmp_path: Path, make_data_config) -> None:
    meta = _metadata(tmp_path / "m.parquet", 40)
    a = select_subset(make_data_config(tmp_path / "s1", "data.select.target_count=7"), meta)
    b = select_subset(make_data_config(tmp_path / "s2", "data.select.target_count=7"), meta)
    assert a.stats["selected"] == 7 and a.stats["not_sampled"] == 33 and a.digest == b.digest


def _absent(path: Path) -> str:
    return str(path)


def _no_columns(path: Path) -> str:
    pq.write_table(pa.table({"url": ["u"], "caption": ["c"]}), path)
    return str(path)


def _not_parquet(path: Path) -> str:
    path.write_text("not parquet")
    return str(path)


BAD_INPUTS: dict[str, tuple[Callable[[Path], str], type[Exception], str]] = {
    "missing_file": (_absent, FileNotFoundError, "data.source names .* which does not exist"),
    "empty": (lambda p: _metadata(p, 0), MetadataError, "holds no rows"),
    "missing_columns": (_no_columns, MetadataError, r"lacks column\(s\) \['width', 'height'"),
    "zero_rows_after_filtering": (lambda p: _metadata(p, 5, similarity=[0.0] * 5), MetadataError,
                                  "passes the select filters"),
    "not_parquet": (_not_parquet, MetadataError, "not a readable Parquet"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_select_subset__bad_input_one_clear_error(tmp_path: Path, case: str, make_data_config) -> None:
    make, error, match = BAD_INPUTS[case]
    with pytest.raises(error, match=match):
        select_subset(make_data_config(tmp_path / "store"), make(tmp_path / "m.parquet"))


def test_select_subset__unreachable_local_root(tmp_path: Path, make_data_config) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="unreachable or unusable"):
        select_subset(make_data_config(blocker / "store"), _metadata(tmp_path / "m.parquet"))

"""Stage 1 (tasks/select.py): filters, sampling, digests, parts folders, and one clear error per bad input."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
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


def _no_url(path: Path) -> str:
    pq.write_table(pa.table({"link": ["u"], "caption": ["c"]}), path)
    return str(path)


def _not_parquet(path: Path) -> str:
    path.write_text("not parquet")
    return str(path)


BAD_INPUTS: dict[str, tuple[Callable[[Path], str], type[Exception], str]] = {
    "missing_file": (_absent, FileNotFoundError, "data.source names .* which does not exist"),
    "empty": (lambda p: _metadata(p, 0), MetadataError, "holds no rows"),
    "no_url_column": (_no_url, MetadataError, r"m.parquet' has no URL column .* it has \['link', 'caption'\]"),
    "int_url": (lambda p: _metadata(p, 3, url=[1, 2, 3]), MetadataError,
                r"m.parquet: column 'url' \(read as 'url'\) is int64, expected a string"),
    "string_width": (lambda p: _metadata(p, 3, width=["64"] * 3), MetadataError,
                     r"m.parquet: column 'width' \(read as 'width'\) is string, expected a number"),
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


def _laion400m(n: int, start: int = 0) -> pa.Table:
    """LAION-400M layout (SAMPLE_ID, URL, TEXT, HEIGHT, WIDTH, LICENSE, NSFW, similarity); every 7th URL repeated."""
    ids = list(range(start, start + n))
    return pa.table({"SAMPLE_ID": ids, "URL": [f"http://127.0.0.1:9/{i - i % 7 if i % 7 == 3 else i}.jpg" for i in ids],
                     "TEXT": [f"t{i}" for i in ids], "HEIGHT": [48 + i % 40 for i in ids],
                     "WIDTH": [20 + i % 90 for i in ids], "LICENSE": ["?"] * n,
                     "NSFW": ["NSFW" if i % 11 == 0 else "UNLIKELY" for i in ids],
                     "similarity": [0.25 + (i % 13) / 100 for i in ids]})


def test_select_subset__parts_folder_same_subset_as_one_concatenated_file(tmp_path: Path, make_data_config) -> None:
    (tmp_path / "parts").mkdir()
    sizes = [120, 7, 300, 1, 172]
    for i, start in enumerate(np.cumsum([0, *sizes[:-1]])):
        pq.write_table(_laion400m(sizes[i], int(start)), tmp_path / "parts" / f"part-{i:05d}.parquet")
    (tmp_path / "parts" / "_SUCCESS").write_text("")  # Spark's marker: not a part
    pq.write_table(_laion400m(sum(sizes)), tmp_path / "whole.parquet")
    overrides = ["data.select.target_count=150"]
    parts = select_subset(make_data_config(tmp_path / "s1", *overrides), str(tmp_path / "parts"))
    whole = select_subset(make_data_config(tmp_path / "s2", *overrides), str(tmp_path / "whole.parquet"))
    assert parts.digest == whole.digest  # the same bytes: the same rows, in the same order
    assert {k: v for k, v in parts.stats.items() if k != "parts"} == {k: v for k, v in whole.stats.items()
                                                                          if k != "parts"}
    assert parts.stats["parts"] == 5 and parts.stats["selected"] == 150 and parts.stats["filtered_nsfw"] > 0
    assert parts.stats["filtered_duplicate_url"] > 0 and parts.stats["skipped_filters"] == {"punsafe": 600,
                                                                                             "pwatermark": 600}
    subset = read_parquet(parts.files["subset"])
    assert subset.num_rows == len(set(subset.column("url").to_pylist())) == 150


def test_select_subset__bad_part_named(tmp_path: Path, make_data_config) -> None:
    (tmp_path / "parts").mkdir()
    pq.write_table(_laion400m(5), tmp_path / "parts" / "part-00000.parquet")
    pq.write_table(_laion400m(5, 5).set_column(1, "URL", pa.array(list(range(5)))),
                   tmp_path / "parts" / "part-00001.parquet")
    with pytest.raises(MetadataError, match=r"parts/part-00001.parquet: column 'URL' \(read as 'url'\) is int64"):
        select_subset(make_data_config(tmp_path / "store"), str(tmp_path / "parts"))

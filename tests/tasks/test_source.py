"""Source stage (tasks/source.py): synthetic corpus, image sets served as corpora, LAION metadata passthrough."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from franca_core.data.corpus import PLACEHOLDER, jpeg
from franca_core.data.synthetic import render_image
from tasks.common.digests import sha256_file
from tasks.common.runner import run_stage
from tasks.common.tables import read_parquet


def source(cfg):
    return run_stage("source", cfg)


def test_source__synthetic_rerun_is_a_noop(data_run) -> None:
    again = source(data_run.cfg)
    assert again.cached and again.digest == data_run.source.digest == sha256_file(data_run.source.files["metadata"])
    assert data_run.source.stats["rows"] == 400 and Path(data_run.source.files["www"]).is_dir()


def test_source__image_folder_served_as_corpus(tmp_path: Path, make_data_config) -> None:
    for i, cls in enumerate(["cat", "cat", "dog"]):
        (tmp_path / "imgs" / cls).mkdir(parents=True, exist_ok=True)
        (tmp_path / "imgs" / cls / f"{i}.jpg").write_bytes(jpeg(render_image(np.random.default_rng(i), 48)[0]))
    cfg = make_data_config(tmp_path / "store", f"data.source={tmp_path / 'imgs'}")
    src = source(cfg)
    meta = read_parquet(src.files["metadata"]).to_pylist()
    assert len(meta) == 3 and all(m["url"].startswith(PLACEHOLDER) for m in meta)
    assert sorted(read_parquet(src.files["annotations"]).column("label_name").to_pylist()) == ["cat", "cat", "dog"]
    served = Path(src.uri) / meta[0]["url"][len(PLACEHOLDER):]
    assert Image.open(io.BytesIO(served.read_bytes())).size == (48, 48)
    assert run_stage("select", cfg, urls=src).stats["selected"] == 3


def _laion(path: Path, n: int) -> None:
    pq.write_table(pa.table({"URL": [f"http://127.0.0.1:9/{i}.jpg" for i in range(n)], "TEXT": ["a"] * n,
                             "WIDTH": [64] * n, "HEIGHT": [64] * n, "similarity": [0.4] * n, "punsafe": [0.0] * n,
                             "pwatermark": [0.0] * n}), path)


def test_source__laion_metadata_snapshot_keyed_by_content(tmp_path: Path, make_data_config) -> None:
    meta = tmp_path / "laion.parquet"
    _laion(meta, 1)
    cfg = make_data_config(tmp_path / "store", f"data.source={meta}")
    src = source(cfg)
    assert src.files["metadata"].startswith(str(tmp_path / "store" / "source"))  # a snapshot, not the original
    assert src.digest == sha256_file(str(meta)) == sha256_file(src.files["metadata"])
    _laion(meta, 3)  # rewritten in place: same path, new content
    again = source(cfg)
    assert not again.cached and again.input_digest != src.input_digest and again.digest == sha256_file(str(meta))
    assert again.stats["rows"] == 3 and source(cfg).cached


def test_source__missing_source_named(tmp_path: Path, make_data_config) -> None:
    with pytest.raises(FileNotFoundError, match="data.source .*absent"):
        source(make_data_config(tmp_path / "store", f"data.source={tmp_path / 'absent'}"))

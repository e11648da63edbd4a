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
from tasks.data_io import read_parquet, sha256_uri
from tasks.select_subset import select
from tasks.source import source


def test_source__synthetic_rerun_is_a_noop(data_run) -> None:
    again = source(data_run.cfg)
    assert again.cached and again.digest == data_run.source.digest == sha256_uri(data_run.source.files["metadata"])
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
    assert select(cfg, src).stats["selected"] == 3


def test_source__laion_metadata_used_where_it_is(tmp_path: Path, make_data_config) -> None:
    meta = tmp_path / "laion.parquet"
    pq.write_table(pa.table({"URL": ["http://127.0.0.1:9/a.jpg"], "TEXT": ["a"], "WIDTH": [64], "HEIGHT": [64],
                             "similarity": [0.4], "punsafe": [0.0], "pwatermark": [0.0]}), meta)
    src = source(make_data_config(tmp_path / "store", f"data.source={meta}"))
    assert src.files["metadata"] == str(meta) and src.digest == sha256_uri(str(meta))
    assert not (tmp_path / "store" / "source").exists()


def test_source__missing_source_named(tmp_path: Path, make_data_config) -> None:
    with pytest.raises(FileNotFoundError, match="data.source .*absent"):
        source(make_data_config(tmp_path / "store", f"data.source={tmp_path / 'absent'}"))

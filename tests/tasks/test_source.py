"""Source stage (tasks/source.py): synthetic corpus, image sets served as corpora, LAION metadata (file or parts)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from PIL import Image

from franca_core.data.corpus import PLACEHOLDER, jpeg
from franca_core.data.synthetic import render_image
from tasks.common.digests import sha256_file, sha256_json
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


def test_source__parts_folder_snapshot_part_by_part_keyed_by_content(tmp_path: Path, make_data_config) -> None:
    folder = tmp_path / "laion2B-en"
    (folder / "sub").mkdir(parents=True)
    for i, rel in enumerate(["part-00000.parquet", "part-00001.parquet", "sub/part-00002.parquet"]):
        _laion(folder / rel, i + 1)
    (folder / "_SUCCESS").write_text("")  # Spark's marker: in the key (the folder's content), not a part
    cfg = make_data_config(tmp_path / "store", f"data.source={folder}")
    src = source(cfg)
    snap = Path(src.files["metadata"])
    copied = sorted(str(p.relative_to(snap)) for p in snap.rglob("*.parquet"))
    assert copied == ["part-00000.parquet", "part-00001.parquet", "sub/part-00002.parquet"]
    assert not (snap / "_SUCCESS").exists() and src.stats == {"rows": 6, "parts": 3}
    assert all(sha256_file(str(snap / rel)) == sha256_file(str(folder / rel)) for rel in copied)  # byte for byte
    assert src.digest == sha256_json({"folder": [[rel, sha256_file(str(snap / rel))] for rel in copied]})
    selected = run_stage("select", cfg, urls=src).stats  # the parts list 0.jpg three times, 1.jpg twice
    assert selected["selected"] == 3 and selected["filtered_duplicate_url"] == 3 and selected["parts"] == 3
    _laion(folder / "part-00001.parquet", 5)  # one part rewritten in place
    again = source(cfg)
    assert not again.cached and again.digest != src.digest and again.stats["rows"] == 9 and source(cfg).cached


def test_source__glob_of_parts_keyed_by_its_matches_content(tmp_path: Path, make_data_config) -> None:
    folder = tmp_path / "relaion"
    folder.mkdir()
    for i in range(3):
        _laion(folder / f"part-{i:05d}.parquet", i + 1)
    _laion(folder / "other.parquet", 4)  # not matched: neither in the key nor in the snapshot
    cfg = make_data_config(tmp_path / "store", f"data.source={folder}/part-*.parquet")
    src = source(cfg)
    assert src.stats == {"rows": 6, "parts": 3}
    _laion(folder / "other.parquet", 7)
    assert source(cfg).cached  # an unmatched file changed: same key
    _laion(folder / "part-00002.parquet", 2)  # a matched part rewritten in place
    again = source(cfg)
    assert not again.cached and again.stats["rows"] == 5
    with pytest.raises(FileNotFoundError, match="data.source names .*none-.*which does not exist"):
        source(make_data_config(tmp_path / "store", f"data.source={folder}/none-*.parquet"))


@pytest.mark.integration
def test_source__s3_prefix_of_parts_same_subset_as_local_folder(moto_s3: str, tmp_path: Path,
                                                                 make_data_config) -> None:
    (tmp_path / "parts").mkdir()
    for i in range(3):
        part = pa.table({"URL": [f"http://127.0.0.1:9/{i}-{j}.jpg" for j in range(4)], "TEXT": ["a"] * 4,
                         "WIDTH": [64] * 4, "HEIGHT": [64] * 4, "similarity": [0.4] * 4, "punsafe": [0.0] * 4,
                         "pwatermark": [0.0] * 4})
        pq.write_table(part, tmp_path / "parts" / f"part-{i}.parquet")
    s3fs.S3FileSystem().put(str(tmp_path / "parts") + "/", f"{moto_s3.removeprefix('s3://')}/laion/", recursive=True)
    local = make_data_config(tmp_path / "s1", f"data.source={tmp_path / 'parts'}", "data.select.target_count=5")
    remote = make_data_config(tmp_path / "s2", f"data.source={moto_s3}/laion", "data.select.target_count=5")
    src = source(remote)
    assert src.stats == {"rows": 12, "parts": 3} and src.digest == source(local).digest
    assert run_stage("select", remote, urls=src).digest == run_stage("select", local, urls=source(local)).digest


def test_source__folder_without_url_parts_is_an_image_folder(tmp_path: Path, make_data_config) -> None:
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    (tmp_path / "imgs" / "cat" / "0.jpg").write_bytes(jpeg(render_image(np.random.default_rng(0), 32)[0]))
    src = source(make_data_config(tmp_path / "store", f"data.source={tmp_path / 'imgs'}"))
    assert "annotations" in src.files and src.stats["rows"] == 1


def test_source__missing_source_named(tmp_path: Path, make_data_config) -> None:
    with pytest.raises(FileNotFoundError, match="data.source .*absent"):
        source(make_data_config(tmp_path / "store", f"data.source={tmp_path / 'absent'}"))

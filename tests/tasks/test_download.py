"""Stage 2 (tasks/download.py): img2dataset over HTTP on 127.0.0.1, failures by cause, no-op rerun, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from franca_core.data.corpus import PLACEHOLDER
from tasks.common.contract import load_stage
from tasks.common.runner import run_stage
from tasks.common.store import StageResult, StageStore
from tasks.common.tables import read_parquet
from tasks.download import DownloadError
from tasks.download_server import serve_folder


def download(cfg, subset: StageResult) -> StageResult:
    return run_stage("download", cfg, subset=subset)


def select_subset(cfg, metadata: str) -> StageResult:
    """source (a snapshot of ``metadata``) -> select."""
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": metadata})})
    return run_stage("select", cfg, urls=run_stage("source", cfg))


PLANTED_CAUSES = {"dead_url": "dead_url", "corrupt": "corrupt", "non_image": "non_image",
                  "decompression_bomb": "decompression_bomb"}


def test_download__every_planted_failure_counted_by_cause(data_run) -> None:
    stats, planted = data_run.downloaded.stats, data_run.source.stats
    for fault, cause in PLANTED_CAUSES.items():
        assert stats[cause] == planted[f"planted_{fault}"] > 0, (cause, stats)
    assert stats["success"] == stats["attempted"] - sum(stats[c] for c in PLANTED_CAUSES.values())
    assert stats["http_error"] == stats["network_error"] == stats["other_error"] == 0
    # per row: the cause recorded for each URL is the fault planted behind it
    samples = read_parquet(data_run.downloaded.files["samples"]).to_pylist()
    faults = dict(zip(*read_parquet(data_run.source.files["annotations"], columns=["sample_id", "fault"])
                      .to_pydict().values()))
    mismatched = [(s["sample_id"], faults[s["sample_id"]], s["cause"]) for s in samples
                  if s["cause"] != PLANTED_CAUSES.get(faults[s["sample_id"]], "success")]
    assert not mismatched


def test_download__shards_resized_to_long_side(data_run) -> None:
    samples = read_parquet(data_run.downloaded.files["samples"]).to_pylist()
    ok = [s for s in samples if s["status"] == "success"]
    assert max(max(s["width"], s["height"]) for s in ok) <= data_run.cfg.data.download.long_side
    shards = sorted(Path(data_run.downloaded.files["shards"]).glob("*.tar"))
    assert len(shards) == 8 and {s["shard"] for s in ok} == {str(p) for p in shards}
    stats = json.loads(Path(data_run.downloaded.files["download_stats"]).read_text())
    assert stats["successes"] == len(ok) and stats["shards"] == 8


def test_download__metadata_kept_in_samples_and_shards(data_run) -> None:
    # caption, similarity, license, the declared size and the URL go with every sample: in samples.parquet (the
    # subset's URL) and in each shard's JSON (img2dataset's save_additional_columns; there the URL fetched).
    subset = {r["sample_id"]: r for r in read_parquet(data_run.subset.files["subset"]).to_pylist()}
    samples = read_parquet(data_run.downloaded.files["samples"]).to_pylist()
    fields = [("url", "url"), ("caption", "caption"), ("similarity", "similarity"), ("license", "license"),
              ("source_width", "width"), ("source_height", "height")]
    assert all(s[ours] == subset[s["sample_id"]][theirs] for s in samples for ours, theirs in fields)
    by_key = {s["key"]: s for s in samples if s["status"] == "success"}
    seen = 0
    for shard in Path(data_run.downloaded.files["shards"]).glob("*.tar"):
        with tarfile.open(shard) as tar:
            for member in (m for m in tar if m.name.endswith(".json")):
                meta = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                row = subset[meta["sample_id"]]
                assert [meta[ours] for ours, _ in fields[1:]] == [row[theirs] for _, theirs in fields[1:]]
                assert meta["url"].endswith(row["url"].removeprefix(PLACEHOLDER))
                assert (meta["original_width"], meta["original_height"]) == (
                    by_key[meta["key"]]["original_width"], by_key[meta["key"]]["original_height"]) != (None, None)
                seen += 1
    assert seen == len(by_key) > 0


def test_download__img2dataset_log_kept(data_run) -> None:
    log = Path(data_run.downloaded.files["log"]).read_text()
    assert "download_worker: 8 shards to download (0 already done)" in log
    assert log.count("finished") == 8 and "allow_hosts=('127.0.0.1:" in log


def test_download__second_run_downloads_nothing(data_run) -> None:
    shards = Path(data_run.downloaded.files["shards"])
    before = {p.name: p.stat().st_mtime_ns for p in shards.iterdir()}
    again = download(data_run.cfg, data_run.subset)
    assert again.cached and again.digest == data_run.downloaded.digest
    assert {p.name: p.stat().st_mtime_ns for p in shards.iterdir()} == before


@pytest.mark.slow
def test_download__two_processes_same_causes_and_digest(data_run, tmp_path: Path, make_data_config) -> None:
    # The shards go to two forked processes: every URL gets the same cause, and the output digest is the same.
    cfg = make_data_config(tmp_path / "store", "data.download.processes=2")
    two = download(cfg, data_run.subset)
    causes = {s["sample_id"]: s["cause"] for s in read_parquet(two.files["samples"]).to_pylist()}
    one = {s["sample_id"]: s["cause"] for s in read_parquet(data_run.downloaded.files["samples"]).to_pylist()}
    assert causes == one and two.digest == data_run.downloaded.digest
    assert len(list(Path(two.files["shards"]).glob("*.tar"))) == 8


@pytest.mark.slow  # an img2dataset start-up: ~30 s on a loaded 2-core machine
def test_download__all_urls_dead_is_one_clear_error(tmp_path: Path, make_data_config) -> None:
    with serve_folder(str(tmp_path)) as server:  # serves an empty folder: every URL is a 404
        meta = tmp_path / "m.parquet"
        n = 12
        pq.write_table(pa.table({"url": [f"{server.base_url}gone/{i}.jpg" for i in range(n)], "caption": ["x"] * n,
                                 "width": [64] * n, "height": [64] * n, "similarity": [0.4] * n,
                                 "punsafe": [0.0] * n, "pwatermark": [0.0] * n}), meta)
        cfg = make_data_config(tmp_path / "store", f"data.download.allow_hosts=['{server.host_port}']")
        subset = select_subset(cfg, str(meta))
        with pytest.raises(DownloadError, match=r"all 12 URLs failed to download: \{'dead_url': 12\}"):
            download(cfg, subset)


_CHILD = """
import sys
from franca_core.config import PipelineConfig
from tasks.common.runner import run_stage
from tasks.common.store import StageResult
cfg = PipelineConfig.model_validate_json(open(sys.argv[1]).read())
run_stage("download", cfg, subset=StageResult.model_validate_json(open(sys.argv[2]).read()))
"""


@pytest.mark.slow
def test_download__killed_mid_way_resumes_to_the_same_digest(data_run, tmp_path: Path, make_data_config) -> None:
    # The corpus served by a server this test owns (slowed down), so it outlives the killed download process.
    with serve_folder(data_run.source.uri, delay_s=0.05) as server:
        meta = read_parquet(data_run.source.files["metadata"])
        urls = [u.replace(PLACEHOLDER, server.base_url) for u in meta.column("url").to_pylist()]
        meta = meta.set_column(meta.schema.get_field_index("url"), "url", pa.array(urls))
        pq.write_table(meta, tmp_path / "metadata.parquet")
        cfg = make_data_config(tmp_path / "store", "data.download.threads=2",
                               f"data.download.allow_hosts=['{server.host_port}']")
        subset = select_subset(cfg, str(tmp_path / "metadata.parquet"))
        (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
        (tmp_path / "subset.json").write_text(subset.model_dump_json())
        store = StageStore(cfg.storage.root)
        key = load_stage("download").key(cfg, {"subset": subset}).digest
        partial = Path(store.scratch("download", key, "shards"))
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "cfg.json"),
                                  str(tmp_path / "subset.json")], start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while not list(partial.glob("*_stats.json")):
                assert child.poll() is None, "the download finished or failed before it could be interrupted"
                assert time.monotonic() < deadline, "no shard finished within 240 s"
                time.sleep(0.05)
        finally:
            os.killpg(child.pid, signal.SIGKILL)  # the stage and its img2dataset child, mid-way
            child.wait()
        finished = {p.name: json.loads(p.read_text())["start_time"] for p in partial.glob("*_stats.json")}
        assert Path(store.base, "download", f".lock-{key}").is_file()  # the killed run's lock, left behind
        assert 0 < len(finished) < 8, finished
        server.delay_s = 0.0
        resumed = download(cfg, subset)
    assert not resumed.cached and resumed.digest == data_run.downloaded.digest
    shards = Path(resumed.files["shards"])
    after = {p.name: json.loads(p.read_text())["start_time"] for p in shards.glob("*_stats.json")}
    assert len(after) == 8 and all(after[name] == t for name, t in finished.items())  # finished shards were kept
    assert Counter(read_parquet(resumed.files["samples"]).column("cause").to_pylist())["success"] == \
        data_run.downloaded.stats["success"]
    assert not Path(store.base, "download", f".lock-{key}").exists() and not partial.exists()
    assert run_stage("dedup", cfg, shards=resumed).digest == data_run.deduped.digest

"""The download stage with ``data.download.distributor=ray`` (tasks/download_ray.py): shards as Ray tasks on 2 nodes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from franca_core.data.download_causes import CAUSES
from tasks.common.runner import run_stage
from tasks.common.tables import read_parquet
from tasks.download_guard import FetchPolicy
from tasks.download_ray import SharedStorageError, download_shard, shard_nodes

_spec = importlib.util.spec_from_file_location("ray_cluster", Path(__file__).with_name("ray_cluster.py"))
ray_cluster = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(ray_cluster)  # type: ignore[union-attr]
two_node_cluster = ray_cluster.two_node_cluster  # the fixture, registered here by name


def test_shard_nodes__reads_the_driver_lines_only() -> None:
    log = ("download_worker: shard 00000 finished on node aa11\n"
           "(download_shard pid=7, ip=127.0.0.1) download_worker: shard 00001 finished on node bb22\n"
           "download_worker: shard 00002 failed\n"
           "download_worker: shard 00002 finished on node bb22\n"
           "download_worker: shard 00003 finished\n")
    assert shard_nodes(log) == {"00000": "aa11", "00002": "bb22"}


def test_download_shard__unreachable_storage_names_the_cause(tmp_path: Path) -> None:
    # A node that cannot see the driver's shard file (a local storage.root on a multi-machine cluster).
    missing = str(tmp_path / "_tmp" / "00000.feather")
    with pytest.raises(SharedStorageError, match=r"cannot read the shard file .*storage.root must be storage every"):
        download_shard({}, ["url"], 1, FetchPolicy(), (0, missing))


@pytest.mark.slow
@pytest.mark.integration
def test_download__ray_tasks_on_two_nodes_give_the_one_process_counts_and_digests(
        data_run, tmp_path: Path, make_data_config, two_node_cluster: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The stage's img2dataset child becomes a Ray driver of the cluster (it inherits these); the corpus server stays
    # in this process on 127.0.0.1, allow-listed as in the one-process run.
    monkeypatch.setenv("RAY_ADDRESS", two_node_cluster)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    cfg = make_data_config(tmp_path / "store", "data.download.distributor=ray")
    one = data_run.downloaded
    result = run_stage("download", cfg, subset=data_run.subset)
    assert not result.cached
    assert result.input_digest == one.input_digest, "the distributor changed the stage's key"
    assert {c: result.stats[c] for c in CAUSES} == {c: one.stats[c] for c in CAUSES}
    by_id = lambda r: {s["sample_id"]: s["cause"] for s in read_parquet(r.files["samples"]).to_pylist()}  # noqa: E731
    assert by_id(result) == by_id(one)
    assert result.digest == one.digest
    nodes = result.stats["shard_nodes"]
    assert sorted(nodes) == [f"{i:05d}" for i in range(8)], nodes
    assert len(set(nodes.values())) == 2, f"the shards did not run on both nodes: {nodes}"
    assert len(list(Path(result.files["shards"]).glob("*.tar"))) == 8
    assert "Ray tasks on 2 node(s)" in Path(result.files["log"]).read_text()
    assert run_stage("dedup", cfg, shards=result).digest == data_run.deduped.digest

"""The data stages with ``storage.root = s3://bucket/prefix`` against moto's S3 server on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import s3fs

from tasks.common.runner import run_stage
from tasks.common.store import StorageError
from tasks.common.tables import read_parquet

BUCKET = "franca-test"  # the bucket of the moto_s3 fixture (tests/tasks/conftest.py)


@pytest.mark.slow
@pytest.mark.integration
def test_data_stages__s3_root_same_dataset_digest_as_local(moto_s3: str, data_run, make_data_config) -> None:
    cfg = make_data_config(f"{moto_s3}/runs/a")
    src = run_stage("source", cfg)
    assert src.files["metadata"].startswith(f"{moto_s3}/runs/a/source/") and src.digest == data_run.source.digest
    subset = run_stage("select", cfg, urls=src)
    downloaded = run_stage("download", cfg, subset=subset)
    assert downloaded.digest == data_run.downloaded.digest  # same URLs' content, other storage
    result = run_stage("dedup", cfg, shards=downloaded)
    assert result.digest == data_run.deduped.digest
    shards = read_parquet(result.files["manifest"], columns=["shard"]).column("shard").to_pylist()
    assert all(s.startswith(f"{moto_s3}/runs/a/download/") and s.endswith(".tar") for s in shards)
    fs = s3fs.S3FileSystem()
    assert not fs.glob(f"{BUCKET}/runs/a/*/.tmp-*") and not fs.glob(f"{BUCKET}/runs/a/download/.work-*")
    assert not fs.glob(f"{BUCKET}/runs/a/*/.lock-*")  # the conditional-write locks were released
    again = run_stage("source", cfg)
    again = run_stage("dedup", cfg, shards=run_stage("download", cfg, subset=run_stage("select", cfg, urls=again)))
    assert again.cached


def test_open_store__unreachable_s3_endpoint_is_one_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                                s3_env: Callable[[str], None],
                                                                make_data_config) -> None:
    with socket.socket() as held:  # bound, never listening: the endpoint refuses every connection
        held.bind(("127.0.0.1", 0))
        s3_env(f"http://127.0.0.1:{held.getsockname()[1]}")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        with pytest.raises(StorageError, match="unreachable or unusable: EndpointConnectionError"):
            run_stage("source", make_data_config(f"s3://{BUCKET}/runs/x"))


@pytest.mark.integration
def test_stage_lock__s3_conditional_write_admits_one_holder(moto_s3: str) -> None:
    from tasks.common.locks import LockTimeout, StageLock, stage_lock
    from tasks.common.store import StageStore

    store = StageStore(f"{moto_s3}/runs/lock")
    with stage_lock(store, "dedup", "k" * 64):
        assert s3fs.S3FileSystem().exists(f"{BUCKET}/runs/lock/dedup/.lock-{'k' * 64}")
        with pytest.raises(LockTimeout):
            StageLock(store, "dedup", "k" * 64).acquire(timeout_s=1.0)
    with stage_lock(store, "dedup", "k" * 64):  # released: free again
        pass
    assert not s3fs.S3FileSystem().exists(f"{BUCKET}/runs/lock/dedup/.lock-{'k' * 64}")

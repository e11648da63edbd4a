"""The data stages with ``storage.root = s3://bucket/prefix`` against moto's S3 server on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import s3fs

from tasks.data_io import StorageError, read_parquet
from tasks.dedup import dedup
from tasks.download import download
from tasks.select_subset import select
from tasks.source import source

BUCKET = "franca-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _s3_env(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Dummy credentials (moto accepts any) and the endpoint, for s3fs here and in child processes."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "dummy-key-for-moto")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dummy-secret-for-moto")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches clients: one built for another endpoint must not be reused


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``moto_server`` on a free port of 127.0.0.1 with an empty bucket; stopped after the test."""
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.1)
        _s3_env(monkeypatch, f"http://127.0.0.1:{port}")
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield f"s3://{BUCKET}"
    finally:
        server.terminate()
        server.wait(timeout=30)
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.slow
@pytest.mark.integration
def test_data_stages__s3_root_same_dataset_digest_as_local(moto_s3: str, data_run, make_data_config) -> None:
    cfg = make_data_config(f"{moto_s3}/runs/a")
    src = source(cfg)
    assert src.files["metadata"].startswith(f"{moto_s3}/runs/a/source/") and src.digest == data_run.source.digest
    subset = select(cfg, src)
    downloaded = download(cfg, subset)
    assert downloaded.digest == data_run.downloaded.digest  # same URLs' content, other storage
    result = dedup(cfg, downloaded)
    assert result.digest == data_run.deduped.digest
    shards = read_parquet(result.files["manifest"], columns=["shard"]).column("shard").to_pylist()
    assert all(s.startswith(f"{moto_s3}/runs/a/download/") and s.endswith(".tar") for s in shards)
    fs = s3fs.S3FileSystem()
    assert not fs.glob(f"{BUCKET}/runs/a/*/.tmp-*") and not fs.glob(f"{BUCKET}/runs/a/download/.partial-*")
    assert dedup(cfg, download(cfg, select(cfg, source(cfg)))).cached


def test_open_store__unreachable_s3_endpoint_is_one_clear_error(monkeypatch: pytest.MonkeyPatch,
                                                                make_data_config) -> None:
    _s3_env(monkeypatch, f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    try:
        with pytest.raises(StorageError, match="unreachable or unusable: EndpointConnectionError"):
            source(make_data_config(f"s3://{BUCKET}/runs/x"))
    finally:
        s3fs.S3FileSystem.clear_instance_cache()

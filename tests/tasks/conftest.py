"""Fixtures of the data-stage tests: one small pipeline run (source -> select -> download -> dedup) shared by them."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from franca_core.config import PipelineConfig, load_config
from tasks.common.store import StageResult

# ~400 rows: 12 exact + 12 near duplicates, 8 dead URLs, 4 corrupt, 2 non-image, 2 bombs, 8 filtered; 8 shards.
DATA_OVERRIDES = ["data.synthetic.n_images=400", "data.synthetic.image_size=64", "data.download.shard_size=50",
                  "data.download.threads=8", "data.download.retries=0", "dedup.include_eval_datasets=false"]


def data_config(root: str | Path, *extra: str) -> PipelineConfig:
    """The tiny profile with the small data settings above, stored under ``root``."""
    return load_config("tiny", [f"storage.root={root}", *DATA_OVERRIDES, *extra])


@pytest.fixture(scope="session")
def make_data_config() -> Callable[..., PipelineConfig]:
    """``data_config`` as a fixture, for tests that need their own store."""
    return data_config


@dataclass
class DataRun:
    """The results of one run of the data stages."""

    cfg: PipelineConfig
    source: StageResult
    subset: StageResult
    downloaded: StageResult
    deduped: StageResult


@pytest.fixture(scope="session")
def data_run(tmp_path_factory: pytest.TempPathFactory) -> DataRun:
    """source -> select -> download -> dedup on a generated corpus, in a local store (once per session)."""
    from tasks.common.runner import run_stage

    cfg = data_config(tmp_path_factory.mktemp("store"))
    src = run_stage("source", cfg)
    subset = run_stage("select", cfg, urls=src)
    downloaded = run_stage("download", cfg, subset=subset)
    return DataRun(cfg, src, subset, downloaded, run_stage("dedup", cfg, shards=downloaded))


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Point s3fs (here and in child processes) at an endpoint, with dummy credentials (moto accepts any)."""
    import s3fs

    def point_at(endpoint: str) -> None:
        for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "dummy-key-for-moto",
                           "AWS_SECRET_ACCESS_KEY": "dummy-secret-for-moto", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        s3fs.S3FileSystem.clear_instance_cache()  # fsspec caches clients: one for another endpoint must not be reused

    yield point_at
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def moto_s3(s3_env: Callable[[str], None]) -> Iterator[str]:
    """``moto_server`` on a free port of 127.0.0.1 with an empty bucket, ``s3://franca-test``; stopped after."""
    import s3fs

    port = free_port()
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
        s3_env(f"http://127.0.0.1:{port}")
        s3fs.S3FileSystem().mkdir("franca-test")
        yield "s3://franca-test"
    finally:
        server.terminate()
        server.wait(timeout=30)
        s3fs.S3FileSystem.clear_instance_cache()

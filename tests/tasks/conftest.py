"""Fixtures of the data-stage tests: one small pipeline run (source -> select -> download -> dedup) shared by them."""

from __future__ import annotations

from collections.abc import Callable
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

"""The ``franca`` flow: from a URL list to an evaluated, registered model (deployment ``franca/full-pipeline``).

    prefect deployment run franca/full-pipeline --param profile=tiny --param 'overrides=["train.optim.total_steps=50"]'
    prefect deployment run franca/periodic-retrain      # snapshots=<folder>: the newest URL list there is the source
    franca run --profile tiny train.optim.total_steps=50      # the same flow in-process

Every stage is a cached, tracked Prefect task (``tasks/prefect_stages.py``): a re-run or a retried run skips each
stage whose inputs are unchanged and finished, and MLflow holds one parent run with one nested run per stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from franca_core.config import ConfigError, PipelineConfig, load_config
from tasks import prefect_stages as stage
from tasks.tracking import close_parent, open_parent


@flow(name="franca", log_prints=True, persist_result=False)
def franca(profile: str = "tiny", overrides: list[str] | None = None, snapshots: str | None = None) -> dict[str, Any]:
    """Train, evaluate and register a Franca model from a URL list; every stage cached and tracked in MLflow."""
    cfg = config(profile, overrides or [], snapshots)
    parent = open_parent(cfg, str(flow_run.get_id()), flow_run.get_name() or "")
    try:
        urls = stage.source(cfg, parent)
        subset = stage.select(cfg, urls, parent)
        shards = stage.download(cfg, subset, parent)
        dataset = stage.dedup(cfg, shards, parent)
        pretrained = stage.pretrain(cfg, dataset, parent)
        adapted = stage.adapt_highres(cfg, pretrained, dataset, parent)
        rasa = stage.fit_rasa(cfg, adapted, dataset, parent)  # on the final weights: high-res training moves them
        report = stage.evaluate(cfg, adapted, rasa, parent)
        model = stage.register(cfg, adapted, rasa, report, dataset, parent)
    except BaseException:
        close_parent(cfg, parent, ok=False)
        raise
    summary = {"model": model.result.uri, "mlflow_run_id": parent, "dataset_digest": dataset.result.digest,
               "url_list_digest": urls.result.digest, **report.result.stats.get("summary", {})}
    close_parent(cfg, parent, ok=True, summary=report.result.stats.get("summary", {}))
    return summary


def config(profile: str, overrides: list[str], snapshots: str | None) -> PipelineConfig:
    """Build the config (``snapshots``: the newest URL list there is the source); a bad value fails before any write."""
    try:
        if snapshots:
            overrides = [*overrides, f"data.source={newest_snapshot(snapshots)}"]
        return load_config(profile, overrides)
    except ConfigError as exc:
        get_run_logger().error(f"config error: {exc}")
        raise


def newest_snapshot(folder: str) -> str:
    """The last ``*.parquet`` by name in a local or s3:// folder (name snapshots by date: laion-2025-06-01.parquet)."""
    fs, path = fsspec.core.url_to_fs(folder)
    found = sorted(fs.glob(f"{path.rstrip('/')}/*.parquet"))
    if not found:
        raise ConfigError(f"no URL snapshot (*.parquet) in {folder!r}: nothing to retrain on")
    newest = fs.unstrip_protocol(found[-1]) if "://" in folder else str(Path(found[-1]).resolve())
    get_run_logger().info(f"newest URL snapshot: {newest} (of {len(found)})")
    return newest

"""The ``franca`` flow: from a URL list to an evaluated, registered model (deployment ``franca/full-pipeline``).

    prefect deployment run franca/full-pipeline --param profile=tiny --param 'overrides=["train.optim.total_steps=50"]'
    prefect deployment run franca/periodic-retrain      # snapshots=<folder>: the newest URL list there is the source
    franca run --profile tiny train.optim.total_steps=50      # the same flow in-process

Every stage is a Prefect task run under its contract (``tasks/common/prefect.py``): a re-run or a retried run serves
each stage whose key (config it reads, content of the files it names, its code, its inputs) is unchanged and whose
output checks out, and MLflow holds one parent run with one nested run per stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from franca_core.config import ConfigError, PipelineConfig, load_config
from infra.offline import apply_offline_env
from tasks.common import prefect as stage
from tasks.common.contract import STAGE_NAMES
from tasks.common.redact import redact, refuse_credentials
from tasks.common.store import StageResult
from tasks.common.tracking import close_parent, open_parent

# Each stage and where its inputs come from (role -> upstream stage), in run order.
PIPELINE: tuple[tuple[str, dict[str, str]], ...] = (
    ("source", {}),
    ("select", {"urls": "source"}),
    ("download", {"subset": "select"}),
    ("dedup", {"shards": "download"}),
    ("pretrain", {"dataset": "dedup"}),
    ("highres", {"model": "pretrain", "dataset": "dedup"}),
    ("rasa", {"model": "highres", "dataset": "dedup"}),  # on the final weights: high-res training moves them
    ("evaluate", {"model": "highres", "rasa": "rasa"}),
    ("register", {"model": "highres", "rasa": "rasa", "report": "evaluate", "dataset": "dedup"}),
)


@flow(name="franca", log_prints=True, persist_result=False)
def franca(profile: str = "tiny", overrides: list[str] | None = None, snapshots: str | None = None,
           until: str | None = None) -> dict[str, Any]:
    """Train, evaluate and register a Franca model from a URL list; every stage cached and tracked in MLflow.

    ``until``: the last stage to run (e.g. ``dedup`` for the data stages only).
    """
    apply_offline_env()  # before any stage imports ray (a worker not started by `franca stack` lacks the settings)
    cfg = config(profile, overrides or [], snapshots)
    if until is not None and until not in STAGE_NAMES:
        raise ConfigError(f"until={until!r} is not a stage. Valid: {list(STAGE_NAMES)}")
    parent = open_parent(cfg, str(flow_run.get_id()), flow_run.get_name() or "")
    results: dict[str, StageResult] = {}
    try:
        for name, wiring in PIPELINE:
            results[name] = stage.run(name, cfg, parent, **{role: results[up] for role, up in wiring.items()})
            if name == until:
                break
    except BaseException:
        close_parent(cfg, parent, ok=False)
        raise
    summary = {**stage.summary(results), "mlflow_run_id": parent}
    close_parent(cfg, parent, ok=True, summary=results["evaluate"].stats.get("summary", {}) if "evaluate" in results
                 else {})
    return summary


def config(profile: str, overrides: list[str], snapshots: str | None) -> PipelineConfig:
    """Build the config (``snapshots``: the newest URL list there is the source); a bad value fails before any write.

    A config carrying credentials (userinfo or a signed query in a URI) is refused: they come from the environment or
    a Prefect secret block. Error texts are redacted, since a rejected value may be one.
    """
    try:
        if snapshots:
            overrides = [*overrides, f"data.source={newest_snapshot(snapshots)}"]
        cfg = load_config(profile, overrides)
        refuse_credentials(cfg.model_dump(mode="json"))
        return cfg
    except ConfigError as exc:
        message = redact(exc)
        get_run_logger().error(f"config error: {message}")
        raise type(exc)(message) from None


def newest_snapshot(folder: str) -> str:
    """The last ``*.parquet`` by name in a local or s3:// folder (name snapshots by date: laion-2025-06-01.parquet)."""
    fs, path = fsspec.core.url_to_fs(folder)
    found = sorted(fs.glob(f"{path.rstrip('/')}/*.parquet"))
    if not found:
        raise ConfigError(f"no URL snapshot (*.parquet) in {folder!r}: nothing to retrain on")
    newest = fs.unstrip_protocol(found[-1]) if "://" in folder else str(Path(found[-1]).resolve())
    get_run_logger().info(f"newest URL snapshot: {newest} (of {len(found)})")
    return newest

"""The ``franca`` flow: from a URL list to an evaluated, registered model (deployment ``franca/full-pipeline``).

    prefect deployment run franca/full-pipeline --param profile=tiny --param 'overrides=["train.optim.total_steps=50"]'
    franca run --profile tiny train.optim.total_steps=50      # the same flow in-process

Every stage is a cached, tracked Prefect task (``tasks/prefect_stages.py``): a re-run or a retried run skips each
stage whose inputs are unchanged and finished, and MLflow holds one parent run with one nested run per stage.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from franca_core.config import ConfigError, PipelineConfig, load_config
from tasks import prefect_stages as stage
from tasks.tracking import close_parent, open_parent


@flow(name="franca", log_prints=True, persist_result=False)
def franca(profile: str = "tiny", overrides: list[str] | None = None) -> dict[str, Any]:
    """Train, evaluate and register a Franca model from a URL list; every stage cached and tracked in MLflow."""
    cfg = config(profile, overrides or [])
    parent = open_parent(cfg, str(flow_run.get_id()), flow_run.get_name() or "")
    try:
        urls = stage.source(cfg, parent)
        subset = stage.select(cfg, urls, parent)
        shards = stage.download(cfg, subset, parent)
        dataset = stage.dedup(cfg, shards, parent)
        pretrained = stage.pretrain(cfg, dataset, parent)
        rasa = stage.fit_rasa(cfg, pretrained, dataset, parent)
        adapted = stage.adapt_highres(cfg, pretrained, dataset, parent)
        report = stage.evaluate(cfg, adapted, rasa, parent)
        model = stage.register(cfg, adapted, rasa, report, dataset, parent)
    except BaseException:
        close_parent(cfg, parent, ok=False)
        raise
    summary = {"model": model.result.uri, "mlflow_run_id": parent, "dataset_digest": dataset.result.digest,
               "url_list_digest": urls.result.digest, **report.result.stats.get("summary", {})}
    close_parent(cfg, parent, ok=True, summary=report.result.stats.get("summary", {}))
    return summary


def config(profile: str, overrides: list[str]) -> PipelineConfig:
    """Build the config; a bad key or value fails the run before anything is written, with one clear line."""
    try:
        return load_config(profile, overrides)
    except ConfigError as exc:
        get_run_logger().error(f"config error: {exc}")
        raise

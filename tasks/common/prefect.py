"""The Prefect glue: one task that runs any stage under its contract, its cache policy, and the flow-side call.

A stage's Prefect cache key comes from its contract (``Stage.key``) and is only given when the store holds a checked
output for it (``runner.checked_hit``); the key then also names that output's MLflow run, so a persisted Prefect
result can never point at an output that was since recomputed. Without a checked output there is no key, the task
runs, and ``runner.run_stage`` serves or computes the output under the stage's lock; the task then names the key its
result is persisted under, so the next run is a Prefect cache hit. Task results are the
``StageResult`` as plain JSON (``result_serializer="json"``): nothing is unpickled on a cache hit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff
from prefect.transactions import get_transaction

from franca_core.config import PipelineConfig
from tasks.common.contract import load_stage
from tasks.common.digests import DigestMemo, sha256_json
from tasks.common.runner import checked_hit, run_stage
from tasks.common.store import StageResult, open_store
from tasks.common.tracking import MlflowTracker, log_cached, redact


@dataclass
class ContractPolicy(CachePolicy):
    """Cache key = the stage's contract key + the checked output's MLflow run; None when there is no such output."""

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        cfg: PipelineConfig = inputs["cfg"]
        stage = load_stage(inputs["stage"])
        key = stage.key(cfg, inputs["inputs"], DigestMemo())
        hit, _ = checked_hit(open_store(cfg.storage.root), stage, key.digest, MlflowTracker(cfg, ""))
        return prefect_key(cfg, hit) if hit is not None else None


def prefect_key(cfg: PipelineConfig, result: StageResult) -> str:
    """The Prefect cache key of a stage output: its contract key, its store and the MLflow run that computed it."""
    return sha256_json({"stage": result.stage, "key": result.input_digest, "root": cfg.storage.root,
                        "run": result.run_id})


@task(name="stage", cache_policy=ContractPolicy(), persist_result=True, result_serializer="json", log_prints=True)
def stage_task(stage: str, cfg: PipelineConfig, parent_run_id: str, inputs: dict[str, StageResult]) -> dict[str, Any]:
    """Serve a pipeline stage from the store, or compute it and log it to MLflow under the flow's parent run."""
    result = run_stage(stage, cfg, MlflowTracker(cfg, parent_run_id), DigestMemo(), print, **inputs)
    txn = get_transaction()
    if txn is not None:  # persist under the key the policy gives from now on (there was none: no checked output)
        txn.key = prefect_key(cfg, result)
    create_markdown_artifact(key=f"stage-{stage}", markdown=markdown(result),
                             description=f"{stage}: output digest and files")
    return result.model_dump(mode="json")


def run(stage: str, cfg: PipelineConfig, parent_run_id: str, **inputs: StageResult) -> StageResult:
    """Run a stage task from the flow; a stage served from cache is recorded in MLflow as a stub of its run."""
    options: dict[str, Any] = {"name": stage, "task_run_name": stage}
    if load_stage(stage).retried:
        t = cfg.tracking
        options |= {"retries": t.stage_retries, "retry_delay_seconds": exponential_backoff(t.retry_delay_s)}
    state = stage_task.with_options(**options)(stage=stage, cfg=cfg, parent_run_id=parent_run_id, inputs=inputs,
                                               return_state=True)
    result = StageResult.model_validate(state.result())  # raises the stage's exception when it failed
    if state.name == "Cached" or result.cached:
        log_cached(cfg, parent_run_id, stage, result, result.run_id)
        result = result.model_copy(update={"cached": True})
    return result


def markdown(result: StageResult) -> str:
    """The Prefect artifact of a stage: digests, MLflow run and a table of its files."""
    rows = "\n".join(f"| {name} | {result.sizes.get(name, '-'):,} | {redact(uri)} |" if name in result.sizes
                     else f"| {name} | - | {redact(uri)} |" for name, uri in result.files.items())
    stats = ", ".join(f"{k}={v}" for k, v in result.stats.items() if isinstance(v, int | float | str))[:1500]
    served = "served from the store" if result.cached else "computed"
    return (f"### {result.stage} ({served})\n\n- output digest `{result.digest}`\n- key `{result.input_digest}`\n"
            f"- MLflow run `{result.run_id}`\n- stats: {stats or '-'}\n\n"
            f"| output | bytes | uri |\n|---|---|---|\n{rows}\n")


def summary(results: Mapping[str, StageResult]) -> dict[str, Any]:
    """The flow's return value: what ran and the headline figures."""
    out: dict[str, Any] = {"stages": {k: {"digest": r.digest, "key": r.input_digest, "run_id": r.run_id,
                                          "cached": r.cached} for k, r in results.items()}}
    if "source" in results:
        out["url_list_digest"] = results["source"].digest
    if "dedup" in results:
        out["dataset_digest"] = results["dedup"].digest
    if "register" in results:
        out["model"] = results["register"].uri
    if "evaluate" in results:
        out.update(results["evaluate"].stats.get("summary", {}))
    return out

"""What every Prefect stage task shares: the cache key, the tracked result and the MLflow bookkeeping around a stage.

The cache key of a stage is ``TASK_SOURCE`` plus ``StageInputs``: the config sections the stage depends on and the
digests of its upstream outputs. Volatile arguments (the MLflow parent run id) and the upstream runs' MLflow ids are
left out, so a new flow run, or a retried one, with unchanged inputs hits the cache, and a change to one section
re-runs that stage and, through the digests, only the stages after it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import mlflow
from prefect import Task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel

from franca_core.config import PipelineConfig, config_digest
from tasks import tracking
from tasks.storage import StageResult


class Tracked(BaseModel):
    """A stage's result and the MLflow run that computed it (what flows between stage tasks)."""

    result: StageResult
    run_id: str
    compute_s: float = 0.0  # seconds inside the stage function (the rest of the task is orchestration/tracking)


def section(cfg: PipelineConfig, dotted: str) -> Any:
    """``section(cfg, "data.select")`` -> that part of the config as JSON-able data."""
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node.model_dump(mode="json") if isinstance(node, BaseModel) else node


@dataclass
class StageInputs(CachePolicy):
    """Cache key from the stage's config sections and upstream output digests, never from volatile arguments."""

    sections: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ("parent_run_id",)

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str | None:
        key: dict[str, Any] = {}
        for name, value in sorted(inputs.items()):
            if name in self.exclude:
                continue
            if isinstance(value, PipelineConfig):
                # storage.root is always part of it: another root is another set of outputs.
                key[name] = {s: section(value, s) for s in ("storage", *self.sections)}
            elif isinstance(value, Tracked):
                key[name] = (value.result.stage, value.result.input_digest, value.result.digest)
            else:
                key[name] = value
        return hash_objects(key, raise_on_failure=True)


def cache_policy(*sections: str) -> CachePolicy:
    """``TASK_SOURCE + StageInputs(sections)``."""
    return TASK_SOURCE + StageInputs(sections=sections)


@dataclass
class StageRun:
    """The MLflow run of one executing stage; ``done`` logs the result and returns it as ``Tracked``."""

    cfg: PipelineConfig
    run_id: str
    sections: tuple[str, ...]
    inputs: dict[str, StageResult] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def done(self, result: StageResult) -> Tracked:
        compute_s = time.perf_counter() - self.started
        mlflow.log_metric("stage_compute_s", compute_s)
        t = self.cfg.tracking
        hash_limit = int(t.hash_limit_mb * 2**20) if t.hash_limit_mb else None
        outputs = tracking.log_result(result, int(t.artifact_limit_mb * 2**20), hash_limit)
        create_markdown_artifact(key=f"stage-{result.stage}", markdown=markdown(result, self.run_id, outputs),
                                 description=f"{result.stage}: output digest and files")
        return Tracked(result=result, run_id=self.run_id, compute_s=compute_s)


@contextmanager
def stage_run(stage: str, sections: tuple[str, ...], cfg: PipelineConfig, parent_run_id: str,
              inputs: Mapping[str, Tracked], files: Mapping[str, str] | None = None) -> Iterator[StageRun]:
    """Open the stage's nested MLflow run: params, config digest, upstream runs and every dataset it reads."""
    params = {}
    for s in sections:
        value = section(cfg, s)
        params.update(tracking.flat_params(value, f"{s}.") if isinstance(value, dict) else {s: str(value)})
    with tracking.stage_run(cfg, parent_run_id, stage, params) as run_id:
        mlflow.set_tags({f"{tracking.TAG}config_digest": config_digest({s: section(cfg, s) for s in sections}),
                         f"{tracking.TAG}profile": cfg.profile,
                         **{f"{tracking.TAG}upstream.{k}": v.run_id for k, v in inputs.items()}})
        t = cfg.tracking
        limit = int(t.hash_limit_mb * 2**20) if t.hash_limit_mb else None
        tracking.log_inputs({k: v.result for k, v in inputs.items()}, files or {}, limit)
        yield StageRun(cfg, run_id, sections, {k: v.result for k, v in inputs.items()})


def call(task: Task[..., Tracked], cfg: PipelineConfig, parent_run_id: str, retried: bool = False,
         **inputs: Any) -> Tracked:
    """Run a stage task from the flow; a cache hit is recorded in MLflow as a stub pointing at the original run."""
    if retried:
        t = cfg.tracking
        task = task.with_options(retries=t.stage_retries, retry_delay_seconds=exponential_backoff(t.retry_delay_s))
    state = task(cfg=cfg, parent_run_id=parent_run_id, return_state=True, **inputs)
    tracked: Tracked = state.result()  # raises the stage's exception when it failed
    if state.name == "Cached":
        tracking.log_cached(cfg, parent_run_id, tracked.result.stage, tracked.result, tracked.run_id)
    return tracked


def markdown(result: StageResult, run_id: str, outputs: Mapping[str, Any]) -> str:
    """The Prefect artifact of a stage: digests, MLflow run and a table of outputs."""
    rows = "\n".join(f"| {name} | `{(o.get('sha256') or '-')[:16]}` | {o['bytes']:,} | {o['uri']} |"
                     for name, o in outputs.items())
    stats = ", ".join(f"{k}={v}" for k, v in result.stats.items() if isinstance(v, int | float | str))[:1500]
    return (f"### {result.stage}\n\n- output digest `{result.digest}`\n- input digest `{result.input_digest}`\n"
            f"- MLflow run `{run_id}`\n- stats: {stats or '-'}\n\n"
            f"| output | sha256 | bytes | uri |\n|---|---|---|---|\n{rows}\n")



"""The wall time of a finished ``franca`` flow run and of each of its stages, read back from Prefect and MLflow.

Shared by ``franca demo`` (its closing summary) and ``franca bench pipeline`` (its JSON). Overhead = flow wall time
(Prefect's flow-run start to end) minus the sum of the stage functions' compute time (``stage_compute_s`` of each
stage's MLflow run): Prefect task bookkeeping, MLflow logging, hashing and artifact copies.
"""

from __future__ import annotations

from typing import Any

from infra.stack import prefect_client

OVERHEAD_GOAL = 0.10  # orchestration overhead, as a fraction of the flow's wall time


def _stage_times(client: Any, experiment_id: str, parent_run_id: str, tag: str) -> dict[str, dict[str, Any]]:
    """``{stage: {compute_s, task_s, cached}}`` from the child runs of the flow's MLflow parent run."""
    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=500)
    stages: dict[str, dict[str, Any]] = {}
    for r in children:
        name = r.data.tags.get(f"{tag}stage", r.info.run_name)
        cached = f"{tag}cached_from" in r.data.tags
        entry = stages.setdefault(name, {"compute_s": 0.0, "task_s": 0.0, "cached": cached})
        entry["compute_s"] += 0.0 if cached else r.data.metrics.get("stage_compute_s", 0.0)
        entry["task_s"] += ((r.info.end_time or r.info.start_time) - r.info.start_time) / 1000
    return stages


def timing(flow_run_id: str, tracking_uri: str, prefect_api_url: str | None = None) -> dict[str, Any]:
    """Wall time of a finished ``franca`` flow run and of each of its stages, from Prefect and MLflow.

    Args:
        flow_run_id: the Prefect flow run.
        tracking_uri: the MLflow server its stages logged to.
        prefect_api_url: the Prefect API (default: ``$PREFECT_API_URL``).

    Returns:
        ``flow_wall_s``, ``stages`` (per stage: ``compute_s``, ``task_s``, ``cached``), ``stage_compute_s``,
        ``overhead_s``, ``overhead_fraction`` and ``goal_overhead_fraction``.

    Raises:
        LookupError: no MLflow run is tagged with the flow run.
    """
    import mlflow

    from tasks.common.tracking import TAG

    with prefect_client(prefect_api_url) as client:
        fr = client.read_flow_run(flow_run_id)
    wall = (fr.end_time - fr.start_time).total_seconds()
    c = mlflow.MlflowClient(tracking_uri)
    found = c.search_runs([e.experiment_id for e in c.search_experiments()],
                          f"tags.`{TAG}flow_run_id` = '{flow_run_id}'", max_results=1)
    if not found:
        raise LookupError(f"no MLflow parent run is tagged with flow run {flow_run_id}")
    parent = found[0]
    stages = _stage_times(c, parent.info.experiment_id, parent.info.run_id, TAG)
    compute = sum(s["compute_s"] for s in stages.values())
    return {
        "flow_run_id": flow_run_id, "flow_state": fr.state_name, "flow_wall_s": round(wall, 1),
        "stages": {k: {kk: round(vv, 2) if isinstance(vv, float) else vv for kk, vv in v.items()}
                   for k, v in stages.items()},
        "stage_compute_s": round(compute, 1), "overhead_s": round(wall - compute, 1),
        "overhead_fraction": round((wall - compute) / wall, 4) if wall else None,
        "goal_overhead_fraction": OVERHEAD_GOAL,
    }

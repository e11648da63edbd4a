"""``franca bench pipeline``: the demo's wall time split by stage, and the orchestration overhead (JSON).

    franca bench pipeline                        # runs the demo config in this process on a fresh storage root
    franca bench pipeline --flow-run FLOW_RUN_ID # the figures of a finished run (e.g. the one `franca demo` made)

Overhead = flow wall time (Prefect's flow-run start to end) minus the sum of the stage functions' compute time
(``stage_compute_s`` of each stage's MLflow run): Prefect task bookkeeping, MLflow logging, hashing and artifact
copies. Goal: <= 10 % of the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import Any

from franca_cli.options import add_config_options
from infra.stack import StackSettings, prefect_client

GOAL = 0.10


def register_bench(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser("pipeline", help="demo wall time by stage and orchestration overhead",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(p)
    p.add_argument("--flow-run", default=None, help="report on this finished flow run instead of running one")
    p.add_argument("--storage", default=None, help="storage root (default: a fresh temporary folder)")
    p.set_defaults(func=run)


def timing(flow_run_id: str, tracking_uri: str, prefect_api_url: str | None = None) -> dict[str, Any]:
    """Wall time of a finished ``franca`` flow run and of each of its stages, from Prefect and MLflow."""
    import mlflow

    from tasks.tracking import TAG

    with prefect_client(prefect_api_url) as client:
        fr = client.read_flow_run(flow_run_id)
    wall = (fr.end_time - fr.start_time).total_seconds()
    c = mlflow.MlflowClient(tracking_uri)
    found = c.search_runs([e.experiment_id for e in c.search_experiments()],
                          f"tags.`{TAG}flow_run_id` = '{flow_run_id}'", max_results=1)
    if not found:
        raise LookupError(f"no MLflow parent run is tagged with flow run {flow_run_id}")
    parent = found[0]
    children = c.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                             order_by=["attributes.start_time ASC"], max_results=500)
    stages: dict[str, dict[str, Any]] = {}
    for r in children:
        name = r.data.tags.get(f"{TAG}stage", r.info.run_name)
        cached = f"{TAG}cached_from" in r.data.tags
        entry = stages.setdefault(name, {"compute_s": 0.0, "task_s": 0.0, "cached": cached})
        entry["compute_s"] += 0.0 if cached else r.data.metrics.get("stage_compute_s", 0.0)
        entry["task_s"] += ((r.info.end_time or r.info.start_time) - r.info.start_time) / 1000
    compute = sum(s["compute_s"] for s in stages.values())
    return {
        "flow_run_id": flow_run_id, "flow_state": fr.state_name, "flow_wall_s": round(wall, 1),
        "stages": {k: {kk: round(vv, 2) if isinstance(vv, float) else vv for kk, vv in v.items()}
                   for k, v in stages.items()},
        "stage_compute_s": round(compute, 1), "overhead_s": round(wall - compute, 1),
        "overhead_fraction": round((wall - compute) / wall, 4) if wall else None, "goal_overhead_fraction": GOAL,
    }


def run(args: argparse.Namespace) -> int:
    from franca_cli.demo import DEMO_OVERRIDES
    from franca_core.config import load_config
    from tasks.tracking import tracking_uri

    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(StackSettings.resolve().result_storage))
    profile, flow_run_id = args.config or args.profile, args.flow_run
    overrides = [*DEMO_OVERRIDES, *args.overrides]
    if flow_run_id is None:
        from flows.full_pipeline import franca

        overrides.append(f"storage.root={args.storage or tempfile.mkdtemp(prefix='franca-bench-')}")
        state = franca(profile=profile, overrides=overrides, return_state=True)
        flow_run_id = str(state.state_details.flow_run_id)
        state.result()  # raise if it failed
    print(json.dumps(timing(flow_run_id, tracking_uri(load_config(profile, overrides))), indent=1))
    return 0

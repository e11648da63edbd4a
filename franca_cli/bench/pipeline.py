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

from franca_cli.demo import DEMO_OVERRIDES
from franca_cli.flow_timing import timing
from franca_cli.options import add_config_options
from infra.stack import StackSettings

HELP = "demo wall time by stage and orchestration overhead"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The config options, ``--flow-run`` and ``--storage``."""
    add_config_options(parser)
    parser.add_argument("--flow-run", default=None, help="report on this finished flow run instead of running one")
    parser.add_argument("--storage", default=None, help="storage root (default: a fresh temporary folder)")


def run(args: argparse.Namespace) -> int:
    """Run the demo config in-process (or read ``--flow-run``) and print its timing JSON."""
    from franca_core.config import load_config
    from tasks.common.tracking import tracking_uri

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

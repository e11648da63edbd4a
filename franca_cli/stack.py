"""``franca stack up|down|status|env``: the local Prefect + MLflow stack on 127.0.0.1 (see ``infra/stack.py``).

    franca stack up --prefect-port 4200 --mlflow-port 5000
    eval "$(franca stack env)"
    prefect deploy --all && prefect deployment run franca/full-pipeline
    franca stack status --json
    franca stack down
"""

from __future__ import annotations

import argparse
import json
import sys

from infra import stack


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stack", help="local Prefect server + worker + MLflow server on 127.0.0.1",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start what is not running (idempotent)")
    up.add_argument("--prefect-port", type=int, default=None, help="default 4200 or $FRANCA_PREFECT_PORT")
    up.add_argument("--mlflow-port", type=int, default=None, help="default 5000 or $FRANCA_MLFLOW_PORT")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each service")
    actions.add_parser("down", help="stop the stack")
    st = actions.add_parser("status", help="pids, health and URLs")
    st.add_argument("--json", action="store_true")
    actions.add_parser("env", help="`export` lines for the Prefect and MLflow clients")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = stack.StackSettings.resolve(getattr(args, "prefect_port", None), getattr(args, "mlflow_port", None))
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731 - stdout stays machine-readable
    try:
        if args.action == "up":
            info = stack.up(settings, timeout=args.timeout, log=log)
            print(f"Prefect UI {info['prefect_ui']}  MLflow UI {info['mlflow_ui']}  work pool {info['work_pool']}\n"
                  f'next: eval "$(franca stack env)" && prefect deploy --all && '
                  f"prefect deployment run franca/full-pipeline")
        elif args.action == "down":
            stack.down(settings, log=log)
        elif args.action == "status":
            info = stack.status(settings)
            if args.json:
                print(json.dumps(info, indent=1))
            else:
                for name, svc in info["services"].items():
                    state = "healthy" if svc["healthy"] else "running" if svc["running"] else "stopped"
                    print(f"{name:15} {state:8} pid={svc['pid']}  log={svc['log']}")
                print(f"Prefect UI {info['prefect_ui']}  MLflow UI {info['mlflow_ui']}  state {info['state']}")
            return 0 if all(s["healthy"] for s in info["services"].values()) else 1
        else:
            print("\n".join(stack.env_lines(settings)))
    except stack.StackError as exc:
        print(f"franca stack: {exc}", file=sys.stderr)
        return 1
    return 0

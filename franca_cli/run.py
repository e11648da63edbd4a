"""``franca run``: the ``franca`` flow in this process (the flow behind ``franca/full-pipeline``).

    franca run --profile tiny train.optim.total_steps=100     # against $PREFECT_API_URL, else a temporary server
    franca run --resume                                       # the last run's config again: finished stages are
                                                              # served from cache, training resumes its checkpoint
    franca run --until dedup                                  # the data stages only (any stage name works)

Prints the run's summary (registered model, MLflow parent run, dataset and URL-list digests, headline metrics) as
JSON; while it runs, the training stages' progress lines (step, loss, images/s, time left) go to stderr. Task
results are persisted under the stack's state folder, so ``franca run`` and deployment runs share the
cache. A config carrying credentials (``storage.root=s3://KEY:SECRET@bucket``, a tracking URI with a password, a
signed URL) is refused before anything is stored: Prefect keeps the flow's parameters and ``last-run.json`` keeps
them for ``--resume``, so credentials come from the environment or a Prefect secret block instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from franca_cli.options import add_config_options
from franca_cli.progress import printing_progress
from franca_core.config import load_config
from infra.offline import state_dir
from infra.stack import StackSettings
from tasks.common.contract import STAGE_NAMES
from tasks.common.redact import refuse_credentials


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the franca flow in this process (cached, resumable, tracked in MLflow)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(p)
    p.add_argument("--resume", action="store_true", help="re-run the last `franca run` config (skips finished stages)")
    p.add_argument("--until", default=None, choices=STAGE_NAMES, metavar="STAGE",
                   help=f"stop after this stage ({', '.join(STAGE_NAMES)})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    last = state_dir() / "last-run.json"
    if args.resume:
        if not last.is_file():
            print(f"franca run: nothing to resume ({last} does not exist)", file=sys.stderr)
            return 2
        params = json.loads(last.read_text())
    else:
        params = {"profile": args.config or args.profile, "overrides": list(args.overrides), "until": args.until}
    # Before the parameters reach last-run.json or Prefect: the loaded config, so a YAML file is checked too.
    cfg = load_config(params["profile"], params["overrides"])
    refuse_credentials(cfg.model_dump(mode="json"))
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(StackSettings.resolve().result_storage))
    from flows.full_pipeline import franca  # after the environment: Prefect reads its settings from it
    from tasks.common.tracking import tracking_uri

    last.parent.mkdir(parents=True, exist_ok=True)
    last.write_text(json.dumps(params))
    with printing_progress(tracking_uri(cfg), lambda line: print(line, file=sys.stderr, flush=True)):
        summary = franca(**params)
    print(json.dumps(summary, indent=1))
    return 0

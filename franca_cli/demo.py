"""``franca demo``: the embedded default job as users run it (what ``make demo`` runs), offline, CPU only.

    franca demo [--prefect-port 4200] [--mlflow-port 5000] [key=value ...]

1. ``franca stack up``: Prefect server + process worker on ``franca-local`` + MLflow server, on 127.0.0.1;
2. ``prefect deploy --all`` (``prefect.yaml``);
3. ``prefect deployment run franca/full-pipeline`` with the tiny profile on the generated LAION-style corpus
   (served on 127.0.0.1), sized by ``DEMO_OVERRIDES`` to finish in minutes on 2 cores, and waits for it, printing
   the training stages' progress lines (step, loss, images/s, time left; ``franca_cli.progress``) as they run;
4. prints where to look (Prefect UI, MLflow UI), the lineage of ``models:/franca-tiny@candidate``, the evaluation
   table and the time per stage. The stack keeps running for the UIs: ``franca stack down`` stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from franca_cli.flow_timing import timing
from franca_cli.options import add_config_options
from franca_cli.progress import printing_progress
from infra import stack

REPO = Path(__file__).resolve().parents[1]
# The tiny profile trimmed to a CPU demo of minutes: 1,000 generated images, 200 pretraining steps, a short high-res
# phase and RASA on 256 images; evaluation on new generated images of the corpus's classes, beside a random-init
# network of the same architecture. The images are whole-image textures (data/synthetic.py, style "textures"): their
# class is in every crop, which 200 steps learn (the report shows k-NN well above random init); the "objects" corpus
# stays at chance in such a budget. `franca demo key=value ...` overrides any of these.
DEMO_OVERRIDES: list[str] = [
    "data.synthetic.n_images=1000",
    "data.synthetic.style=textures",
    "data.download.shard_size=250",
    "train.optim.total_steps=200",
    "train.checkpoint_every=50",
    "train.monitor.every=50",  # RankMe and view k-NN in the progress lines as the 200 steps go (operational)
    "highres.steps=20",
    "highres.warmup_steps=5",
    "highres.batch_size=8",
    "rasa.max_images=256",
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="stack up, deploy and run franca/full-pipeline on the embedded default data",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_options(p)
    p.add_argument("--prefect-port", type=int, default=None)
    p.add_argument("--mlflow-port", type=int, default=None)
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the flow run")
    p.set_defaults(func=run)


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _prefect(args: list[str], env: dict[str, str], timeout: float) -> str:
    """Run the ``prefect`` CLI from the repository root (as a user would), streaming its output; returns stdout."""
    _log(f"$ prefect {' '.join(args)}")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "--no-prompt", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    for line in proc.stdout:  # `--watch` prints state changes as they happen: show them as they come
        lines.append(line)
        _log(line.rstrip())
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"`prefect {' '.join(args)}` did not finish in {timeout:.0f} s")
    out = "".join(lines)
    if proc.wait() != 0 and "Failed" not in out:
        raise RuntimeError(f"`prefect {' '.join(args)}` exited with {proc.returncode}")
    return out


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    settings = stack.StackSettings.resolve(args.prefect_port, args.mlflow_port)
    stack.up(settings, log=_log)
    os.environ.update(settings.client_env())  # before Prefect/MLflow are imported: they read their settings from it
    env = dict(os.environ)
    _prefect(["deploy", "--all"], env, 600)
    overrides = [*DEMO_OVERRIDES, *args.overrides]
    with printing_progress(settings.mlflow_uri, _log):  # the training stages' step, loss, images/s, time left
        out = _prefect(["deployment", "run", "franca/full-pipeline", "--param",
                        f"profile={args.config or args.profile}", "--param", f"overrides={json.dumps(overrides)}",
                        "--watch", "--watch-timeout", str(int(args.timeout))], env, args.timeout + 60)
    match = re.search(r"UUID: ([0-9a-f-]{36})", out)
    if not match:
        raise RuntimeError("could not read the flow run id from `prefect deployment run`")
    flow_run_id = match.group(1)
    report = summarize(flow_run_id, settings, args.config or args.profile, overrides)
    report["demo_wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"\ndemo wall time {report['demo_wall_s']:.0f} s; stop the stack with `franca stack down`")
    return 0 if report["state"] == "COMPLETED" else 1


def summarize(flow_run_id: str, settings: stack.StackSettings, profile: str, overrides: list[str]) -> dict[str, Any]:
    """Print where to look, the lineage, the evaluation table and the time per stage of a finished demo run."""
    import mlflow

    from franca_cli.lineage import render
    from tasks.common import lineage, tracking

    with stack.prefect_client(settings.prefect_api_url) as client:
        flow_run = client.read_flow_run(flow_run_id)
    state = flow_run.state_type.value if flow_run.state_type else "UNKNOWN"
    print(f"\nflow run {flow_run.name} ({flow_run_id}): {state}")
    print(f"Prefect UI  http://127.0.0.1:{settings.prefect_port}/runs/flow-run/{flow_run_id}")
    if state != "COMPLETED":
        print(f"logs: prefect flow-run logs {flow_run_id}")
        return {"state": state}
    mlflow.set_tracking_uri(settings.mlflow_uri)
    c = mlflow.MlflowClient(settings.mlflow_uri)
    record = lineage.trace(c, f"models:/franca-{profile}@candidate")
    parent = c.get_run(record["pipeline"]["run_id"])
    print(f"MLflow UI   {tracking.ui_url(settings.mlflow_uri, parent.info.experiment_id, parent.info.run_id)}")
    print(f"model       models:/franca-{profile}@candidate  ->  franca lineage models:/franca-{profile}@candidate")
    print("\n" + render(record, None))
    evaluate = next(s for s in record["stages"] if s["stage"] == "evaluate")
    print("\n" + evaluation_table(evaluate["computed_by_run_id"]))
    times = timing(flow_run_id, settings.mlflow_uri, settings.prefect_api_url)
    print("\ntime per stage (s): " + ", ".join(f"{k} {v['compute_s']:.1f}" for k, v in times["stages"].items())
          + f"; flow {times['flow_wall_s']:.0f}, orchestration overhead {times['overhead_s']:.0f} "
          f"({100 * (times['overhead_fraction'] or 0):.1f} %)")
    return {"state": state, "timing": times}


def evaluation_table(run_id: str) -> str:
    """The evaluate stage's Markdown report (each figure with its random-init value beside it), or its metrics."""
    import mlflow

    for path in ("evaluation/report.md", "outputs/report.md"):  # the stage's own upload, else our copy
        try:
            return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)).read_text()
        except Exception:  # noqa: BLE001 - try the next place, then fall back to the run's metrics
            continue
    return metrics_table(mlflow.MlflowClient().get_run(run_id).data.metrics)


def metrics_table(metrics: dict[str, float]) -> str:
    """The stage's ``summary.<metric>`` figures, with ``summary.baseline.<metric>`` (random init) beside each."""
    own = {k: v for k, v in metrics.items() if k.startswith("summary.") and not k.startswith("summary.baseline.")}
    rows = []
    for key, value in sorted(own.items()):
        base = metrics.get("summary.baseline." + key.removeprefix("summary."))
        rows.append(f"| {key.removeprefix('summary.')} | {value:.4f} | {'-' if base is None else f'{base:.4f}'} |")
    return "| metric | value | random init |\n|---|---|---|\n" + "\n".join(rows)

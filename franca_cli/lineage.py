"""``franca lineage``: where did this model come from? Back to the URL list, from MLflow.

    franca lineage models:/franca-tiny@candidate          # or models:/franca-tiny/3, franca-tiny
    franca lineage 0123456789abcdef0123456789abcdef        # an MLflow run id (pipeline or stage)
    franca lineage .franca/store/pretrain/<digest>/checkpoint.pt
    franca lineage models:/franca-tiny@candidate --json --verify

The tracking server is ``--tracking-uri``, else ``MLFLOW_TRACKING_URI`` (``eval "$(franca stack env)"``), else the
local SQLite store of the default config. ``--verify`` recomputes the sha256 of every stage output still on
storage and exits 1 when one changed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from franca_core.config import PipelineConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lineage", help="trace a model, run or checkpoint back to the URL list (MLflow)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", metavar="MODEL|RUN_ID|CHECKPOINT")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--verify", action="store_true", help="recompute output digests; exit 1 if any changed")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stdout is the lineage, not bars
    import mlflow

    from tasks.common import lineage, tracking

    uri = args.tracking_uri or tracking.tracking_uri(PipelineConfig())
    mlflow.set_tracking_uri(uri)
    c = mlflow.MlflowClient(tracking_uri=uri)
    try:
        record = lineage.trace(c, args.target)
    except lineage.LineageError as exc:
        print(f"franca lineage: {exc}", file=sys.stderr)
        return 2
    checks = lineage.verify(c, record) if args.verify else []
    if args.verify:
        record["verify"] = checks
    if args.json:
        print(json.dumps(record, indent=1))
    else:
        print(render(record, checks if args.verify else None))
    return 1 if any(ch["status"] == "changed" for ch in checks) else 0


def _short(value: str | None, n: int = 12) -> str:
    return (value or "-")[:n]


def _metric_rank(item: tuple[str, float]) -> tuple[int, str]:
    """Headline evaluation figures first, then a stage's top-level figures, then nested ones."""
    key = item[0]
    return (0 if key.startswith(("summary.", "eval.")) else 1 if "." not in key else 2, key)


def render(record: dict[str, Any], checks: list[dict[str, Any]] | None) -> str:
    """The lineage as text, newest stage first, down to the URL list."""
    lines = []
    if m := record["model"]:
        lines.append(f"model {m['name']} version {m['version']} aliases {m['aliases'] or '-'} "
                     f"(model digest {_short(m['tags'].get('franca.model_digest'))})")
    p = record["pipeline"]
    lines.append(f"pipeline run {p['run_id']} [{p['status']}] profile {p['profile']} flow-run {p['flow_run_id']} "
                 f"commit {_short(p['git_commit'])} config {_short(p['config_digest'])}")
    for s in record["stages"]:
        cached = f" (cached: computed by run {s['computed_by_run_id']})" if s["cached"] else ""
        lines.append(f"  {s['stage']:<9} run {s['run_id']} [{s['status']}]{cached}")
        lines.append(f"      config {_short(s['config_digest'])}  commit {_short(s['git_commit'])}"
                     f"{' (dirty)' if s['git_dirty'] == 'true' else ''}  input digest {_short(s['input_digest'])}")
        for i in s["inputs"]:
            lines.append(f"      <- {i['name']:<22} sha256 {_short(i['sha256'], 16)}  ({i['context']})")
        lines.append(f"      -> output sha256 {_short(s['output_digest'], 16)}  {s['output_uri']}")
        metrics = [f"{k}={v:.4g}" for k, v in sorted(s["metrics"].items(), key=_metric_rank)][:8]
        if metrics:
            lines.append(f"      metrics {' '.join(metrics)}")
    if u := record["url_list"]:
        lines.append(f"URL list sha256 {u['sha256']}  {u['uri']}")
    if checks is not None:
        bad = [c for c in checks if c["status"] == "changed"]
        lines.append(f"verify: {len(checks)} outputs checked, {len(bad)} changed, "
                     f"{sum(c['status'] == 'missing' for c in checks)} missing")
        for c in checks:
            if c["status"] != "ok":
                lines.append(f"  {c['status'].upper():9} {c['stage']}/{c['output']}  {c['uri']}")
    return "\n".join(lines)

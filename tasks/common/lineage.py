"""Lineage from MLflow: from a registered model, a run or a stage output back to the URL list, and its verification.

``resolve`` turns what the user has (``models:/franca-tiny@candidate``, ``models:/franca-tiny/3``, a registered model
name, an MLflow run id, a path inside a stage output) into the pipeline's parent run; ``trace`` reads the parent's
stage runs (following cached stubs to the runs that computed them) into one JSON-able record; ``verify`` recomputes
the sha256 of every output still on storage and compares it with ``outputs.json`` logged when it was made. What they
return (and their errors) passes ``redact``: a URI with credentials recorded by an older run is never printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run

from tasks.common.contract import STAGE_NAMES
from tasks.common.digests import uri_digest
from tasks.common.redact import redact, redact_tree
from tasks.common.store import RESULT_FILE, StageResult
from tasks.common.tracking import TAG

STAGE_ORDER = STAGE_NAMES


class LineageError(LookupError):
    """The model, run or path cannot be traced; the message says what was looked for."""


def _model_version(c: MlflowClient, ref: str) -> Any:
    body = ref.removeprefix("models:/")
    if "@" in body:
        name, alias = body.split("@", 1)
        return c.get_model_version_by_alias(name, alias)
    if "/" in body:
        name, version = body.split("/", 1)
        return c.get_model_version(name, version)
    aliases = c.get_registered_model(body).aliases
    if aliases:
        return c.get_model_version(body, aliases.get("candidate") or sorted(aliases.values())[-1])
    return max(c.search_model_versions(f"name = '{body}'"), key=lambda v: int(v.version))


def _stage_output(path: str) -> StageResult | None:
    """The stage result whose output folder holds ``path`` (walks up to the folder with ``result.json``)."""
    fs, p = fsspec.core.url_to_fs(path)
    p = p.rstrip("/")
    while p and p not in ("/", "."):
        marker = f"{p}/{RESULT_FILE}"
        if fs.exists(marker):
            with fs.open(marker, "r") as f:
                try:
                    return StageResult.model_validate_json(f.read())
                except ValueError:
                    return None  # an unfinished output: it names no run
        p = p.rsplit("/", 1)[0] if "/" in p else ""
    return None


def resolve(c: MlflowClient, target: str) -> dict[str, Any]:
    """``{"parent_run_id", "model" (or None), "asked"}`` for a model reference, run id or stage-output path."""
    model = None
    try:
        if target.startswith("models:/") or (not Path(target).exists() and not _looks_like_run_id(target)):
            mv = _model_version(c, target)
            model = {"name": mv.name, "version": mv.version, "aliases": list(mv.aliases or []),
                     "run_id": mv.run_id, "source": mv.source, "tags": dict(mv.tags)}
            run = c.get_run(mv.run_id)
        elif _looks_like_run_id(target):
            run = c.get_run(target)
        else:
            result = _stage_output(str(Path(target).resolve()) if "://" not in target else target)
            if result is None:
                raise LineageError(redact(f"{target} is not inside a stage output (no {RESULT_FILE} above it)"))
            found = [c.get_run(result.run_id)] if result.run_id else c.search_runs(
                [e.experiment_id for e in c.search_experiments()],
                f"tags.`{TAG}stage` = '{result.stage}' and tags.`{TAG}input_digest` = '{result.input_digest}'",
                order_by=["attributes.start_time ASC"], max_results=1)
            if not found:
                raise LineageError(redact(f"no MLflow run recorded the {result.stage} output {result.uri}"))
            run = found[0]
    except mlflow.exceptions.MlflowException as exc:
        raise LineageError(redact(f"{target!r} is not a registered model, model version or run here: {exc.message}")
                           ) from None
    parent = run.data.tags.get("mlflow.parentRunId") or run.info.run_id
    return {"parent_run_id": parent, "model": model, "asked": target}


def _looks_like_run_id(text: str) -> bool:
    return len(text) == 32 and all(ch in "0123456789abcdef" for ch in text)


def _stage_record(c: MlflowClient, run: Run) -> dict[str, Any]:
    tags = run.data.tags
    source_id = tags.get(f"{TAG}cached_from")
    source = c.get_run(source_id) if source_id else run
    st = source.data.tags
    inputs = [{"name": d.dataset.name, "context": {t.key: t.value for t in d.tags}.get("mlflow.data.context"),
               "sha256": {t.key: t.value for t in d.tags}.get("sha256") or d.dataset.digest,
               "source": d.dataset.source} for d in (source.inputs.dataset_inputs if source.inputs else [])]
    return {"stage": tags.get(f"{TAG}stage"), "run_id": run.info.run_id, "cached": bool(source_id),
            "computed_by_run_id": source.info.run_id, "status": run.info.status,
            "config_digest": st.get(f"{TAG}config_digest"), "git_commit": st.get(f"{TAG}git_commit"),
            "git_dirty": st.get(f"{TAG}git_dirty"), "input_digest": st.get(f"{TAG}input_digest"),
            "output_digest": st.get(f"{TAG}output_digest"), "output_uri": st.get(f"{TAG}output_uri"),
            "inputs": inputs, "metrics": dict(source.data.metrics)}


def trace(c: MlflowClient, target: str) -> dict[str, Any]:
    """The pipeline behind ``target``: parent run, each stage (newest finished attempt) and the URL list."""
    asked = resolve(c, target)
    parent = c.get_run(asked["parent_run_id"])
    children = c.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                             order_by=["attributes.start_time DESC"], max_results=500)
    stages: dict[str, dict[str, Any]] = {}
    for run in children:  # newest first: a retried stage's successful attempt wins over its failed one
        name = run.data.tags.get(f"{TAG}stage")
        if name and (name not in stages or (stages[name]["status"] != "FINISHED" and run.info.status == "FINISHED")):
            stages[name] = _stage_record(c, run)
    ordered = [stages[s] for s in reversed(STAGE_ORDER) if s in stages]
    ordered += [r for s, r in stages.items() if s not in STAGE_ORDER]
    url_list = None
    if "source" in stages:
        url_list = {"sha256": stages["source"]["output_digest"], "uri": stages["source"]["output_uri"]}
    pt = parent.data.tags
    pipeline = {"run_id": parent.info.run_id, "status": parent.info.status, "flow_run_id": pt.get(f"{TAG}flow_run_id"),
                "profile": pt.get(f"{TAG}profile"), "config_digest": pt.get(f"{TAG}config_digest"),
                "git_commit": pt.get(f"{TAG}git_commit")}
    return redact_tree({"asked": target, "model": asked["model"], "url_list": url_list, "stages": ordered,
                        "pipeline": pipeline})


def verify(c: MlflowClient, lineage: dict[str, Any]) -> list[dict[str, Any]]:
    """Recompute every recorded output digest; each check is ``ok``, ``changed``, ``missing`` or ``size-only``."""
    checks = []
    for stage in lineage["stages"]:
        try:
            record = mlflow.artifacts.load_dict(f"runs:/{stage['computed_by_run_id']}/outputs.json")
        except Exception:  # noqa: BLE001 - a stage without outputs.json (e.g. failed) has nothing to verify
            continue
        for name, out in record.get("outputs", {}).items():
            check = {"stage": stage["stage"], "output": name, "uri": out["uri"], "expected": out.get("sha256")}
            try:
                now = uri_digest(out["uri"]) if out.get("sha256") else uri_digest(out["uri"], 0)
            except FileNotFoundError:
                checks.append({**check, "status": "missing", "actual": None})
                continue
            if not out.get("sha256"):
                status = "size-only" if now["bytes"] == out["bytes"] else "changed"
            else:
                status = "ok" if now["sha256"] == out["sha256"] else "changed"
            checks.append({**check, "status": status, "actual": now.get("sha256")})
    return [redact_tree(check) for check in checks]

"""MLflow as the system of record: one parent run per flow run, one nested run per stage, hashes of everything.

A parent run (tags: Prefect flow-run id, git commit, config digest, profile) holds the full config as an artifact.
Each stage gets a nested run with its config section as params, its stats as metrics, ``mlflow.log_input`` of every
dataset it read (a ``MetaDataset`` with a concrete source, a 32-hex digest and the full sha256 in the input's tags,
because MLflow caps a digest at 36 characters), and its outputs: small files as artifacts, large ones as URIs, all of
them hashed into ``outputs.json`` so that ``franca lineage --verify`` can recompute them later. A stage served from
the store gets a stub run pointing at the run that computed it (``franca.cached_from``). ``MlflowTracker`` is what
the stage runner (``tasks.common.runner``) logs through.

Credentials never reach MLflow: every param, tag, dataset source and logged JSON goes through ``redact`` /
``redact_tree`` (``tasks.common.redact``: URLs parsed, userinfo dropped, signed query values masked).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import (  # type: ignore[attr-defined]  # re-exported lazily; mypy sees no attribute
    HTTPDatasetSource,
    LocalArtifactDatasetSource,
    S3ArtifactDatasetSource,
)
from mlflow.exceptions import MlflowException
from pydantic import BaseModel

from franca_core.config import PipelineConfig, config_digest
from tasks.common.contract import Stage, StageKey
from tasks.common.digests import fs_of, uri_digest
from tasks.common.redact import redact, redact_tree
from tasks.common.store import StageResult

TAG = "franca."
REPO = Path(__file__).resolve().parents[1]
# The experiment's kind, for MLflow UIs that read it. MLflow 3.17's UI does not: it takes its view (GenAI or model
# training) from the link's workflowType, else the browser's last choice, else GenAI; hence ``ui_url``.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
TRAINING_STAGES = ("pretrain", "highres")  # their runs carry MLflow system metrics (CPU, memory, GPU if pynvml)
def tracking_uri(cfg: PipelineConfig) -> str:
    """``tracking.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else SQLite beside a local storage root."""
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = cfg.storage.root if "://" not in cfg.storage.root else str(Path(".franca").resolve())
    Path(root).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def ui_url(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """A link that opens the experiment (or one of its runs) in the MLflow UI's model-training view."""
    route = f"/#/experiments/{experiment_id}/runs" + (f"/{run_id}" if run_id else "")
    return f"{base.rstrip('/')}{route}?workflowType=machine_learning"


def client(cfg: PipelineConfig) -> MlflowClient:
    """An MLflow client for this config; also points the fluent API at the same store."""
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def experiment_id(cfg: PipelineConfig) -> str:
    """The experiment's id, created when missing.

    Two flow runs started together both find no experiment and both create it; the loser's create fails with
    RESOURCE_ALREADY_EXISTS, and it then reads the one the winner made.
    """
    c, name = client(cfg), cfg.tracking.experiment
    exp = c.get_experiment_by_name(name)
    if exp:
        if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:  # made before the tag, or elsewhere
            c.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)
        return str(exp.experiment_id)
    try:
        return str(c.create_experiment(name, tags=dict([EXPERIMENT_KIND])))
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS" or (exp := c.get_experiment_by_name(name)) is None:
            raise
        return str(exp.experiment_id)


def code_version() -> dict[str, str]:
    """The git commit of the project code (``+dirty`` when it has uncommitted changes), or ``unknown``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": "unknown"}
    return {"commit": commit, "dirty": str(bool(dirty)).lower()}


def flat_params(data: Mapping[str, Any] | BaseModel, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b.c": "value"}``, redacted and cut to MLflow's 6000-character limit."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, f"{name}."))
        else:
            value = redact_tree(value, name)  # lists too: eval.datasets may name URIs
            out[name] = str(value if isinstance(value, str) else json.dumps(value))[:6000]
    return out


# ----------------------------------------------------------------------------------------------- runs
def open_parent(cfg: PipelineConfig, flow_run_id: str, flow_run_name: str = "", kind: str = "pipeline",
                parent_run_id: str | None = None) -> str:
    """The parent run of this flow run: reopened on a retry of the same flow run, else created.

    ``kind`` tags what the flow is (``pipeline``, ``ablation``, ``ablation-variant``); ``parent_run_id`` nests this
    run under another flow's run (an ablation variant under the ablation's run).
    """
    c, exp = client(cfg), experiment_id(cfg)
    found = c.search_runs([exp], f"tags.`{TAG}flow_run_id` = '{flow_run_id}'", max_results=1)
    if found:
        c.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    code = code_version()
    tags = {f"{TAG}kind": kind, f"{TAG}flow_run_id": flow_run_id, "prefect.flow_run_id": flow_run_id,
            "prefect.flow_run_name": flow_run_name, f"{TAG}profile": cfg.profile,
            f"{TAG}config_digest": config_digest(cfg), f"{TAG}git_commit": code["commit"],
            f"{TAG}git_dirty": code["dirty"], "mlflow.source.git.commit": code["commit"]}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(exp, run_name=redact(f"franca-{cfg.profile}-{flow_run_name or flow_run_id[:8]}"),
                       tags=redact_tree(tags))
    c.log_dict(run.info.run_id, redact_tree(cfg.model_dump(mode="json")), "config.json")
    return run.info.run_id


def close_parent(cfg: PipelineConfig, run_id: str, ok: bool, summary: Mapping[str, Any] | None = None) -> None:
    """Mark the parent FINISHED or FAILED, with the pipeline's headline metrics."""
    c = client(cfg)
    for key, value in (summary or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            c.log_metric(run_id, key, float(value))
    c.set_terminated(run_id, "FINISHED" if ok else "FAILED")


def dataset_source(uri: str) -> Any:
    """A concrete MLflow dataset source for a local path, s3:// or http(s):// URI."""
    if uri.startswith("s3://"):
        return S3ArtifactDatasetSource(redact(uri))
    if uri.startswith(("http://", "https://")):
        return HTTPDatasetSource(redact(uri))
    return LocalArtifactDatasetSource(str(Path(uri.removeprefix("file://")).resolve()))


def log_inputs(inputs: Mapping[str, StageResult], files: Mapping[str, tuple[str, str]]) -> None:
    """``log_input`` for every upstream output and every file the config names (``{label: (uri, sha256)}``)."""
    for role, up in inputs.items():
        ds = MetaDataset(dataset_source(up.uri), name=f"{up.stage}:{role}", digest=up.digest[:32])  # type: ignore[abstract]
        mlflow.log_input(ds, context=role, tags={"sha256": up.digest, "stage": up.stage,
                                                  "input_digest": up.input_digest})
        mlflow.set_tag(f"{TAG}input.{role}", f"{up.stage}:{up.digest}")
    for name, (uri, sha) in files.items():
        ds = MetaDataset(dataset_source(uri), name=name, digest=sha[:32])  # type: ignore[abstract]
        mlflow.log_input(ds, context="reference",
                         tags={"sha256": sha, "uri": redact(uri)})
        mlflow.set_tag(f"{TAG}input.{name}", sha)


def log_result(result: StageResult, artifact_limit_bytes: int, hash_limit_bytes: int | None) -> dict[str, Any]:
    """Tags, metrics, artifacts and ``outputs.json`` (per-output sha256) of a finished stage."""
    mlflow.set_tags({f"{TAG}input_digest": result.input_digest, f"{TAG}output_digest": result.digest,
                     f"{TAG}output_uri": redact(result.uri), f"{TAG}cached_in_store": str(result.cached).lower()})
    metrics, steps = numeric_stats(result.stats)
    if metrics:
        mlflow.log_metrics(metrics)
    for key, series in steps.items():
        for step, value in series:
            mlflow.log_metric(key, value, step=step)
    outputs: dict[str, Any] = {}
    for name, uri in result.files.items():
        if not uri.startswith(result.uri.rstrip("/") + "/"):
            continue  # a pointer to an upstream file (e.g. the corpus folder): that stage's run records it
        outputs[name] = {"uri": redact(uri), **uri_digest(uri, hash_limit_bytes)}
        if _copyable(outputs[name], uri, artifact_limit_bytes):
            fs, path = fs_of(uri)
            if fs.isdir(path):
                mlflow.log_artifacts(path, artifact_path=f"outputs/{name}")
            else:
                mlflow.log_artifact(path, artifact_path="outputs")
            outputs[name]["artifact"] = True
    mlflow.log_dict({"stage": result.stage, "uri": redact(result.uri), "input_digest": result.input_digest,
                     "digest": result.digest, "outputs": outputs}, "outputs.json")
    mlflow.log_dict(redact_tree(json.loads(json.dumps(result.stats, default=str))), "stats.json")
    return outputs


def _copyable(digest: Mapping[str, Any], uri: str, limit_bytes: int) -> bool:
    """Small local files and small folders of a few non-shard files are copied into MLflow; the rest by URI."""
    if "://" in uri or digest["bytes"] > limit_bytes:
        return False
    if digest["kind"] == "dir":
        fs, path = fs_of(uri)
        return digest["files"] <= 200 and not any(p.endswith(".tar") for p in fs.find(path))
    return True


def numeric_stats(stats: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, float], dict[str, list]]:
    """Scalars -> metrics; lists of ``{"step": n, ...}`` dicts (training history) -> per-step series."""
    scalars: dict[str, float] = {}
    series: dict[str, list[tuple[int, float]]] = {}
    for key, value in stats.items():
        name = re.sub(r"[^\w\-./ ]", "_", f"{prefix}{key}")
        if isinstance(value, bool):
            scalars[name] = float(value)
        elif isinstance(value, int | float):
            scalars[name] = float(value)
        elif isinstance(value, Mapping):
            sub_scalars, sub_series = numeric_stats(value, f"{name}.")
            scalars.update(sub_scalars)
            series.update(sub_series)
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) and "step" in v for v in value):
            for row in value:
                for k, v in row.items():
                    if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                        series.setdefault(f"{name}.{k}", []).append((int(row["step"]), float(v)))
    return scalars, series


def log_cached(cfg: PipelineConfig, parent_run_id: str, stage: str, result: StageResult, source_run_id: str) -> str:
    """A stub child run for a stage served from cache: it names the run that computed the output."""
    c = client(cfg)
    source = c.get_run(source_run_id)
    if source.data.tags.get("mlflow.parentRunId") == parent_run_id:
        return source_run_id  # a retry of the same flow run: the stage's run is already under this parent
    logged = c.search_runs([experiment_id(cfg)], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                           f"tags.`{TAG}cached_from` = '{source_run_id}'", max_results=1)
    if logged:
        return logged[0].info.run_id  # a retry of this flow run already recorded the same cache hit
    keep = {k: v for k, v in source.data.tags.items() if k.startswith(TAG) and k != f"{TAG}cached_from"}
    tags = {**keep, f"{TAG}cached_from": source_run_id, "mlflow.parentRunId": parent_run_id}
    run = c.create_run(experiment_id(cfg), run_name=f"{stage} (cached)", tags=tags)
    c.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, v) for k, v in source.data.params.items()])
    c.log_inputs(run.info.run_id, datasets=source.inputs.dataset_inputs if source.inputs else [])
    c.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def file_inputs(cfg: PipelineConfig, stage: Stage, key: StageKey) -> dict[str, tuple[str, str]]:
    """``{label: (path, sha256)}`` of every file the stage's config fields named, as its key hashed them."""
    out: dict[str, tuple[str, str]] = {}

    def walk(label: str, value: Any, digest: Any) -> None:
        if isinstance(value, list):
            for i, (v, d) in enumerate(zip(value, digest or [])):
                walk(f"{label}[{i}]", v, d)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{label}.{k}", v, (digest or {}).get(k))
        elif isinstance(value, str) and isinstance(digest, str):
            out[label] = (value, digest)

    for name, digest in key.parts["files"].items():
        node: Any = cfg
        for part in name.split("."):
            node = getattr(node, part)
        walk(name, node, digest)
    return out


class MlflowTracker:
    """The runner's tracker: one nested MLflow run per computed stage under the flow's parent run."""

    def __init__(self, cfg: PipelineConfig, parent_run_id: str) -> None:
        self.cfg, self.parent_run_id = cfg, parent_run_id
        self.client = client(cfg)
        self._started = 0.0

    def run_exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            return False
        return True

    @contextmanager
    def stage_run(self, stage: Stage, cfg: PipelineConfig, key: StageKey,
                  inputs: Mapping[str, StageResult]) -> Iterator[str]:
        """A nested run for one stage, active in this thread: params, key, code version, inputs."""
        params = flat_params(key.parts["config"])
        code = code_version()
        tags = {f"{TAG}kind": "stage", f"{TAG}stage": stage.name, f"{TAG}git_commit": code["commit"],
                f"{TAG}git_dirty": code["dirty"], "mlflow.source.git.commit": code["commit"],
                f"{TAG}profile": self.cfg.profile, f"{TAG}config_digest": config_digest(key.parts["config"]),
                f"{TAG}code_digest": key.parts["code"], f"{TAG}input_digest": key.digest,
                **{f"{TAG}upstream.{k}": v.run_id for k, v in inputs.items()}}
        with mlflow.start_run(experiment_id=experiment_id(self.cfg), run_name=stage.name, nested=True,
                              parent_run_id=self.parent_run_id, tags=redact_tree(tags),
                              log_system_metrics=True if stage.name in TRAINING_STAGES else None) as run:
            mlflow.log_params(params)
            log_inputs(inputs, file_inputs(cfg, stage, key))
            self._started = time.perf_counter()
            yield run.info.run_id

    def log_result(self, cfg: PipelineConfig, result: StageResult) -> None:
        mlflow.log_metric("stage_compute_s", time.perf_counter() - self._started)
        t = self.cfg.tracking
        hash_limit = int(t.hash_limit_mb * 2**20) if t.hash_limit_mb else None
        log_result(result, int(t.artifact_limit_mb * 2**20), hash_limit)

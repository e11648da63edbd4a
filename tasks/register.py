"""Stage 8: register the final model (backbone + RASA) in the MLflow Model Registry with its lineage tags.

The model's files (the adapted backbone's weights and the RASA matrix, both weights-only formats) are logged under
``model/`` of the register run beside ``franca_model.json`` (architecture, digests, upstream runs), and a new
version of ``<prefix>-<profile>`` is created from ``runs:/<run>/model`` with the configured alias (``candidate``).
Its tags link to the dataset digest, the URL-list digest and every stage's run, so ``franca lineage`` can walk back.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fsspec
import mlflow

from franca_core.config import PipelineConfig
from tasks import tracking
from tasks.digests import uri_digest
from tasks.stage_runner import Tracked
from tasks.storage import StageResult, input_digest, sha256_json

# Which outputs of the upstream stages make up the registered model (logical names in StageResult.files).
MODEL_FILES = {"model": ("backbone", "model", "weights"), "rasa": ("rasa",)}


def model_files(inputs: Mapping[str, Tracked]) -> dict[str, str]:
    """``{artifact name: uri}`` of the files that make up the model, checked to exist."""
    files: dict[str, str] = {}
    for role, prefixes in MODEL_FILES.items():
        result = inputs[role].result
        chosen = {k: v for k, v in result.files.items() if k.startswith(prefixes)}
        if not chosen:
            raise ValueError(f"the {result.stage} output {result.uri} has no file named {list(prefixes)}; "
                             f"it has {sorted(result.files)}")
        files.update({f"{role}.{k}": v for k, v in chosen.items()})
    return files


def register(cfg: PipelineConfig, run_id: str, parent_run_id: str, inputs: Mapping[str, Tracked]) -> StageResult:
    """Log the model files to the active run, create a model version and point the alias at it."""
    name = f"{cfg.tracking.registered_model_prefix}-{cfg.profile}"
    files = model_files(inputs)
    digests = {k: uri_digest(v) for k, v in files.items()}
    card: dict[str, Any] = {
        "name": name, "profile": cfg.profile, "files": {k: Path(v).name for k, v in files.items()},
        "sha256": {k: d["sha256"] for k, d in digests.items()},
        "architecture": cfg.train.model.model_dump(mode="json"), "highres": cfg.highres.model_dump(mode="json"),
        "inputs": {k: {"stage": t.result.stage, "digest": t.result.digest, "run_id": t.run_id}
                   for k, t in inputs.items()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for key, uri in files.items():
            local = Path(tmp) / f"{key}{Path(uri).suffix}"
            fsspec.core.url_to_fs(uri)[0].get(fsspec.core.url_to_fs(uri)[1], str(local), recursive=True)
            card["files"][key] = local.name
            mlflow.log_artifact(str(local), artifact_path="model")
        (Path(tmp) / "franca_model.json").write_text(json.dumps(card, indent=1))
        mlflow.log_artifact(str(Path(tmp) / "franca_model.json"), artifact_path="model")
    dataset = inputs["dataset"].result
    tags = {f"{tracking.TAG}pipeline_run_id": parent_run_id, f"{tracking.TAG}dataset_digest": dataset.digest,
            f"{tracking.TAG}profile": cfg.profile, f"{tracking.TAG}model_digest": sha256_json(card["sha256"]),
            **{f"{tracking.TAG}run.{t.result.stage}": t.run_id for t in inputs.values()},
            f"{tracking.TAG}run.register": run_id}
    c = tracking.client(cfg)
    if c.search_registered_models(f"name = '{name}'", max_results=1) == []:
        c.create_registered_model(name, description="Franca backbone + RASA, trained by franca-pipeline")
    version = c.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id, tags=tags)
    c.set_registered_model_alias(name, cfg.tracking.alias, version.version)
    mlflow.set_tags({f"{tracking.TAG}registered_model": name, f"{tracking.TAG}model_version": version.version})
    return StageResult(stage="register", uri=f"models:/{name}/{version.version}",
                       input_digest=input_digest({"name": name, "alias": cfg.tracking.alias},
                                                 {k: t.result.digest for k, t in inputs.items()}),
                       digest=tags[f"{tracking.TAG}model_digest"],
                       stats={"version": int(version.version), "name": name, "alias": cfg.tracking.alias})

"""Stage 8: register the final model (backbone + RASA) in the MLflow Model Registry with its lineage tags.

The model is an MLflow pyfunc (``tasks.common.pyfunc_model``): ``model/`` of the register run holds ``MLmodel``, its
signature and input example, and one weights-only artifact (the adapted backbone with its RASA matrix, safetensors),
beside ``franca_model.json`` (architecture, digests, upstream runs); ``mlflow.pyfunc.load_model(
"models:/<prefix>-<profile>@candidate").predict(images)`` returns the CLS and (RASA) patch features. A new version of
``<prefix>-<profile>`` is created from ``runs:/<run>/model`` with the configured alias (``candidate``). Its tags link
to the dataset digest and every stage's run, so ``franca lineage`` can walk back; the run also carries
``lineage.svg``, a picture of that stage graph (``tasks.common.lineage_graph``). The stage's marker
(``<root>/register/<key>/result.json``) names the version; a hit is served only while that version exists.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from franca_core.config import ModelConfig, PipelineConfig
from franca_core.models.io import save_backbone
from tasks.common.contract import stage
from tasks.common.digests import sha256_json, uri_digest
from tasks.common.lineage_graph import ARTIFACT, Node, lineage_svg
from tasks.common.model_io import load_stage_model, rasa_matrix_of
from tasks.common.pyfunc_model import save_pyfunc
from tasks.common.store import StageResult, Workspace
from tasks.common.tracking import TAG

# Which outputs of the upstream stages make up the registered model (logical names in StageResult.files).
MODEL_FILES = {"model": ("backbone", "model"), "rasa": ("rasa",)}
USAGE = ("MLflow pyfunc: mlflow.pyfunc.load_model(uri).predict(images) with float32 (N, 3, H, W) ImageNet-normalised "
         "images returns {'cls': (N, D), 'patch': (N, HW/p^2, D)}, RASA on the patch tokens; params={'dim': d} keeps "
         "the first d dimensions. Lineage: tags franca.*, lineage.svg on the run.")


def model_files(inputs: Mapping[str, StageResult]) -> dict[str, str]:
    """``{artifact name: uri}`` of the files that make up the model, checked to exist."""
    files: dict[str, str] = {}
    for role, prefixes in MODEL_FILES.items():
        result = inputs[role]
        chosen = {k: v for k, v in result.files.items() if k.startswith(prefixes)}
        if not chosen:
            raise ValueError(f"the {result.stage} output {result.uri} has no file named {list(prefixes)}; "
                             f"it has {sorted(result.files)}")
        files.update({f"{role}.{k}": v for k, v in chosen.items()})
    return files


def version_exists(result: StageResult) -> str | None:
    """The hit check of this stage: the model version its marker names is in the current registry."""
    name, _, version = result.uri.removeprefix("models:/").rpartition("/")
    try:
        mlflow.MlflowClient().get_model_version(name, version)
    except mlflow.exceptions.MlflowException:
        return f"the model version {result.uri} is not in this registry"
    return None


def _log_model(inputs: Mapping[str, StageResult], card: dict[str, Any], expected: ModelConfig) -> None:
    """One safetensors file (backbone + RASA matrix) as the pyfunc model's artifact, logged under ``model/``."""
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_stage_model(inputs["model"], Path(tmp) / "remote", expected)
        weights = save_backbone(loaded.model(with_rasa=False), loaded.model_cfg,
                                Path(tmp) / "franca_backbone.safetensors",
                                rasa_matrix=rasa_matrix_of(inputs["rasa"], Path(tmp) / "remote"))
        folder = save_pyfunc(Path(tmp) / "model", weights, loaded.model_cfg)
        card["files"] = {"weights": f"artifacts/{weights.name}"}
        card["architecture"] = loaded.model_cfg.model_dump(mode="json")  # img_size as served (high-res)
        (folder / "franca_model.json").write_text(json.dumps(card, indent=1))
        mlflow.log_artifacts(str(folder), artifact_path="model")


@stage("register", reads=("profile", "tracking.registered_model_prefix", "tracking.alias", "train.model", "highres"),
       inputs=("model", "rasa", "report", "dataset"), check=version_exists)
def register(cfg: PipelineConfig, ws: Workspace, model: StageResult, rasa: StageResult, report: StageResult,
             dataset: StageResult) -> StageResult:
    """Log the model files to the stage's run, create a model version and point the alias at it."""
    name = f"{cfg.tracking.registered_model_prefix}-{cfg.profile}"
    inputs = {"model": model, "rasa": rasa, "report": report, "dataset": dataset}
    files = model_files(inputs)
    digests = {k: uri_digest(v) for k, v in files.items()}
    card: dict[str, Any] = {
        "name": name, "profile": cfg.profile, "sources": {k: Path(v).name for k, v in files.items()},
        "sha256": {k: d["sha256"] for k, d in digests.items()},
        "architecture": cfg.train.model.model_dump(mode="json"), "highres": cfg.highres.model_dump(mode="json"),
        "inputs": {k: {"stage": r.stage, "digest": r.digest, "run_id": r.run_id} for k, r in inputs.items()},
    }
    _log_model(inputs, card, cfg.train.model)
    tags = {f"{TAG}pipeline_run_id": ws.parent_run_id, f"{TAG}dataset_digest": dataset.digest,
            f"{TAG}profile": cfg.profile, f"{TAG}model_digest": sha256_json(card["sha256"]),
            **{f"{TAG}run.{r.stage}": r.run_id for r in inputs.values()}, f"{TAG}run.register": ws.run_id}
    c = mlflow.MlflowClient()
    if c.search_registered_models(f"name = '{name}'", max_results=1) == []:
        try:
            c.create_registered_model(name, description="Franca backbone + RASA, trained by franca-pipeline")
        except MlflowException as e:  # another flow run registered its first version in between
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    version = c.create_model_version(name, source=f"runs:/{ws.run_id}/model", run_id=ws.run_id, tags=tags,
                                     description=USAGE)
    c.set_registered_model_alias(name, cfg.tracking.alias, version.version)
    mlflow.set_tags({f"{TAG}registered_model": name, f"{TAG}model_version": version.version})
    root = Node("register", tags[f"{TAG}model_digest"], ws.run_id)
    mlflow.log_text(lineage_svg(c, root, inputs, f"{name} version {version.version}"), ARTIFACT)
    return StageResult(stage="register", uri=f"models:/{name}/{version.version}", input_digest=ws.digest,
                       digest=tags[f"{TAG}model_digest"], run_id=ws.run_id,
                       stats={"version": int(version.version), "name": name, "alias": cfg.tracking.alias})

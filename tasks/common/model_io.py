"""What the post-training stages (rasa, highres, evaluate) read from upstream outputs: models, RASA, images.

Upstream ``StageResult.files`` name their files: the pretrain stage writes ``backbone`` (plain safetensors of the
teacher backbone) beside ``train_config`` (JSON); the highres stage writes ``backbone`` in the self-describing
format of ``franca_core.models.io``; a ``checkpoint`` may be a training checkpoint file. Remote URIs (``s3://``)
are copied to a local folder first.

``load_model`` reads a backbone from any model spec (what ``--model`` and ``train.init_from`` accept):

- ``models:/<name>@<alias>`` or ``models:/<name>/<version>``: a version of the MLflow Model Registry (the tracking
  server of ``MLFLOW_TRACKING_URI`` or the given one); its ``franca_model.json`` names the weights (the pyfunc's
  ``artifacts/`` safetensors with the RASA matrix, or the backbone / train config / RASA files of older versions);
- a local or ``s3://`` file: this project's checkpoint or backbone, or DINOv2 / Franca / DINOv3 weights in their
  original key layout (``franca_core.models.foreign``);
- ``timm:<model name>:<weights file>`` (the file local or ``s3://``).

``train.init_from`` (a local or ``s3://`` file of any layout above; its content enters the pretrain key, and so every
key after it): ``init_backbone_state`` gives its weights at the configured architecture and size, for the training
stages to start from (the pretrain stage passes it through untrained at ``train.optim.total_steps=0``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import fsspec
import torch
from safetensors.torch import load_file
from torch import Tensor
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from franca_core.config import ModelConfig, TrainConfig
from franca_core.data.shards import IMAGE_EXTENSIONS, ShardIndex
from franca_core.highres import resized_backbone
from franca_core.models.io import TIMM_PREFIX, LoadedBackbone, check_architecture, load_backbone, load_model_spec
from tasks.common.digests import local_copy
from tasks.common.store import StageResult


def load_stage_model(result: StageResult, folder: Path, expected: ModelConfig | None = None) -> LoadedBackbone:
    """The backbone of a pretrain / highres output (or any result with a ``backbone`` or ``checkpoint`` file)."""
    files = result.files
    if "backbone" in files and str(files["backbone"]).endswith(".safetensors"):
        model_cfg = train = None
        if "train_config" in files:
            train = json.loads(local_copy(files["train_config"], folder).read_text())
            model_cfg = TrainConfig.model_validate(train).model
        loaded = load_backbone(local_copy(files["backbone"], folder), expected, model_cfg)
        loaded.train_config = loaded.train_config or train
        return loaded
    if "checkpoint" in files and Path(str(files["checkpoint"])).suffix == ".pt":
        return load_backbone(local_copy(files["checkpoint"], folder), expected)
    raise ValueError(f"the {result.stage} output {result.uri} has no model file (backbone .safetensors or "
                     f"checkpoint .pt); it has {sorted(files)}")


MODELS_PREFIX = "models:/"


def registry_files(uri: str, folder: Path, tracking_uri: str | None = None) -> Path:
    """Download the files of a registered model version (``models:/name@alias`` or ``models:/name/version``)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    ref = uri.removeprefix(MODELS_PREFIX)
    name, at, alias = ref.partition("@")
    # MLFLOW_TRACKING_URI as this call sees it: mlflow's process-wide URI may still name a store set up earlier.
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        if at:
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = ref.rpartition("/")
            if not name or not number.isdigit():
                raise ValueError(f"{uri} is not models:/<name>@<alias> or models:/<name>/<version>")
            version = client.get_model_version(name, number)
        folder.mkdir(parents=True, exist_ok=True)
        # the version's own artifact location (runs:/ or mlflow-artifacts:/), read through this tracking server
        source = client.get_model_version_download_uri(name, version.version)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(folder),
                                                        tracking_uri=tracking_uri))
    except MlflowException as exc:
        raise ValueError(f"{uri}: {exc.message}") from None


def _registered_backbone(model_dir: Path, uri: str) -> LoadedBackbone:
    """The backbone (and RASA matrix) of a downloaded registered version, as ``franca_model.json`` names them."""
    card_path = model_dir / "franca_model.json"
    card: dict[str, Any] = json.loads(card_path.read_text()) if card_path.is_file() else {}
    files = {k: model_dir / v for k, v in card.get("files", {}).items()}
    weights = files.get("weights") or next((p for k, p in files.items() if k.startswith("model.")
                                            and p.suffix in (".safetensors", ".pt")), None)
    if weights is None:  # no card: the one self-describing safetensors file of the folder
        found = sorted(model_dir.rglob("*.safetensors"))
        weights = found[0] if len(found) == 1 else None
    if weights is None or not weights.is_file():
        held = sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file())
        raise ValueError(f"{uri} holds no backbone weights this project can read (files {held})")
    model_cfg = None
    train_file = next((p for k, p in files.items() if k.endswith("train_config")), None)
    if train_file is not None:
        model_cfg = TrainConfig.model_validate(json.loads(train_file.read_text())).model
    elif "architecture" in card:
        model_cfg = ModelConfig.model_validate(card["architecture"])
    loaded = load_backbone(weights, model_cfg=model_cfg)
    rasa_file = next((p for k, p in files.items() if k.startswith("rasa.") and p.suffix == ".safetensors"), None)
    if loaded.rasa_matrix is None and rasa_file is not None:
        loaded.rasa_matrix = load_file(str(rasa_file)).get("rasa.matrix")
    loaded.source = uri
    return loaded


def load_model(spec: str, folder: Path, num_heads: int | None = None, expected: ModelConfig | None = None,
               tracking_uri: str | None = None) -> LoadedBackbone:
    """A backbone from any model spec (see the module docstring); remote files are copied under ``folder``.

    Raises:
        ValueError: a spec of no known form, a file of no known layout, a registry entry that does not exist.
        FileNotFoundError: a local file that does not exist.
    """
    spec = str(spec).strip()
    if not spec:
        raise ValueError("empty model spec")
    if spec.startswith(MODELS_PREFIX):
        loaded = _registered_backbone(registry_files(spec, folder, tracking_uri), spec)
        if expected is not None:
            check_architecture(loaded.model_cfg, expected, spec)
        return loaded
    if spec.startswith(TIMM_PREFIX):
        name, sep, weights = spec[len(TIMM_PREFIX):].partition(":")
        local = f"{TIMM_PREFIX}{name}{sep}{local_copy(weights, folder) if weights else ''}"
        loaded = load_model_spec(local, num_heads, expected)
        loaded.source = spec
        return loaded
    path = local_copy(spec, folder)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {spec}")
    loaded = load_model_spec(path, num_heads, expected)
    loaded.source = spec
    return loaded


def init_backbone_state(spec: str, model_cfg: ModelConfig, folder: Path) -> dict[str, Tensor]:
    """The ``FrancaViT`` weights of ``spec`` (``train.init_from``) for ``model_cfg``: its architecture checked (heads
    as configured), its position grid resized to ``model_cfg.img_size``. Load them into the student and the teacher
    backbone (``franca_core.highres.load_initial_backbone``); the heads stay fresh.

    Raises:
        ValueError: another architecture, or one FrancaViT cannot represent (DINOv3's RoPE ViT).
    """
    loaded = load_model(spec, folder, num_heads=model_cfg.num_heads, expected=model_cfg)
    resized, _ = resized_backbone(loaded.backbone, loaded.model_cfg, model_cfg.img_size)
    return {k: v.contiguous() for k, v in resized.state_dict().items()}


def rasa_matrix_of(result: StageResult, folder: Path) -> torch.Tensor:
    """The (D, D) matrix of a rasa stage output."""
    if "rasa" not in result.files:
        raise ValueError(f"the {result.stage} output {result.uri} has no 'rasa' file; it has {sorted(result.files)}")
    tensors = load_file(str(local_copy(result.files["rasa"], folder)))
    if "rasa.matrix" not in tensors:
        raise ValueError(f"{result.files['rasa']} holds no 'rasa.matrix' tensor")
    return tensors["rasa.matrix"]


def shard_images(dataset: StageResult, limit: int) -> list[bytes]:
    """The first ``limit`` kept images of a dedup output (manifest order: shard, key), as encoded bytes."""
    manifest = dataset.files.get("manifest", f"{dataset.uri.rstrip('/')}/manifest.parquet")
    index = ShardIndex.from_manifest(manifest)
    images: list[bytes] = []
    for uri, keys in zip(index.shards, index.keys):
        wanted = set(keys)
        with fsspec.open(uri, "rb") as f:
            for member in tar_file_iterator(f):
                key, ext = base_plus_ext(member["fname"])
                if key in wanted and ext is not None and ext.lower() in IMAGE_EXTENSIONS:
                    images.append(member["data"])
                    if len(images) >= limit:
                        return images
    return images

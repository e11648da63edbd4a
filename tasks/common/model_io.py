"""What the post-training stages (rasa, highres, evaluate) read from upstream outputs: models, RASA, images.

Upstream ``StageResult.files`` name their files: the pretrain stage writes ``backbone`` (plain safetensors of the
teacher backbone) beside ``train_config`` (JSON); the highres stage writes ``backbone`` in the self-describing
format of ``franca_core.models.io``; a ``checkpoint`` may be a training checkpoint file. Remote URIs (``s3://``)
are copied to a local folder first.
"""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import torch
from safetensors.torch import load_file
from webdataset.tariterators import base_plus_ext, tar_file_iterator

from franca_core.config import ModelConfig, TrainConfig
from franca_core.data.shards import IMAGE_EXTENSIONS, ShardIndex
from franca_core.models.io import LoadedBackbone, load_backbone
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

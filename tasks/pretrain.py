"""Stage 4, pretrain: Franca on Ray Train over the kept shards of the dedup manifest (DESIGN.md, Stages).

The output folder ``<root>/pretrain/<key>/`` holds the Ray run (``ray/<name>/checkpoint_*/state.pt``), the final
teacher (``teacher.safetensors``: backbone + heads; ``backbone.safetensors``: what ``build_backbone(train.model)``
loads) and ``train_config.json``; ``result.json`` is written last. The run goes through the training stages' one
Ray Train runner (``tasks/common/ray_train.py``): its name derives from the stage's key and the run directory is used
only under the stage's lock, so running the stage again with the same config and dataset resumes the run from its
latest checkpoint and two runs never train into one directory.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import ray.train
from safetensors.torch import save as safetensors_bytes

from franca_core.config import PipelineConfig, TrainConfig
from tasks.common.contract import stage
from tasks.common.ray_train import OPERATIONAL_FIELDS, fit, publish_bytes, run_stats
from tasks.common.store import StageResult, Workspace


def _publish(ws: Workspace, cfg: TrainConfig, dataset: StageResult, result: ray.train.Result,
             state: dict[str, Any]) -> StageResult:
    """Write the final teacher and config next to the Ray run; the runner writes ``result.json`` last."""
    teacher = {k: v.contiguous() for k, v in state["teacher"].items()}
    blobs = {"teacher.safetensors": safetensors_bytes(teacher),
             "backbone.safetensors": safetensors_bytes({k.removeprefix("backbone."): v for k, v in teacher.items()
                                                        if k.startswith("backbone.")}),
             "train_config.json": cfg.model_dump_json(indent=1).encode()}
    publish_bytes(ws, blobs)
    assert result.checkpoint is not None  # fit raises on a run without one
    files = {"teacher": "teacher.safetensors", "backbone": "backbone.safetensors", "train_config": "train_config.json",
             "checkpoint": ws.store.uri(result.checkpoint.path), "ray_run": ws.store.uri(result.path)}
    stats = {**run_stats(ws, cfg, result, state), "ln_k": math.log(cfg.heads.dino.n_prototypes),
             "dataset_digest": dataset.digest}
    return ws.result(hashlib.sha256(blobs["teacher.safetensors"]).hexdigest(), files, stats)


@stage("pretrain", reads=("train",), operational=OPERATIONAL_FIELDS, inputs=("dataset",), retried=True)
def pretrain(cfg: PipelineConfig, ws: Workspace, dataset: StageResult) -> StageResult:
    """Pretrain Franca on the dataset's kept shards with Ray Train; resumes an unfinished run of the same key."""
    manifest = dataset.files.get("manifest", f"{dataset.uri.rstrip('/')}/manifest.parquet")
    result, state = fit("pretrain", cfg.train, ws, {"manifest": manifest})
    return _publish(ws, cfg.train, dataset, result, state)

"""Stage 4, pretrain: Franca on Ray Train over the kept shards of the dedup manifest (DESIGN.md, Stages).

The output folder ``<root>/pretrain/<key>/`` holds the Ray run (``ray/<name>/checkpoint_*/state.pt``), the final
teacher (``teacher.safetensors``: backbone + heads; ``backbone.safetensors``: what ``build_backbone(train.model)``
loads) and ``train_config.json``; ``result.json`` is written last. The run goes through the training stages' one
Ray Train runner (``tasks/common/ray_train.py``): its name derives from the stage's key and the run directory is used
only under the stage's lock, so running the stage again with the same config and dataset resumes the run from its
latest checkpoint and two runs never train into one directory.

``train.init_from`` (any model spec ``tasks.common.model_io.load_model`` reads: this project's checkpoints, DINOv2 /
Franca / DINOv3 layouts, ``timm:<name>:<file>``; its content is in the key) gives the weights the student and teacher
backbones start from (heads fresh; the position grid resized to ``train.model.img_size``); a checkpoint of the run
replaces them on resume. With ``train.optim.total_steps=0`` nothing trains and Ray is not started: the output is
that model as it was read (``backbone.safetensors``, self-describing: a timm-only architecture such as DINOv3's RoPE
ViT included, plus ``train_config.json``), for highres / rasa / evaluate / register to adapt, evaluate or register.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from pathlib import Path
from typing import Any

import ray.train
from safetensors.torch import save as safetensors_bytes

from franca_core.config import PipelineConfig, TrainConfig
from franca_core.highres import resized_backbone
from franca_core.models.backbone import FrancaViT
from franca_core.models.io import save_backbone
from tasks.common.contract import file_digests, stage
from tasks.common.model_io import init_backbone_state, load_model
from tasks.common.ray_train import OPERATIONAL_FIELDS, fit, publish_bytes, run_stats
from tasks.common.store import StageResult, Workspace

INIT_FILE = "init_backbone.safetensors"


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
             "dataset_digest": dataset.digest, **_provenance(ws, cfg)}
    return ws.result(hashlib.sha256(blobs["teacher.safetensors"]).hexdigest(), files, stats)


def _provenance(ws: Workspace, cfg: TrainConfig) -> dict[str, Any]:
    """``init_from`` and the sha256 of its weights file (as the stage's key hashed it), when set."""
    if not cfg.init_from:
        return {}
    digest = ws.recipe.get("files", {}).get("train.init_from") or file_digests("train.init_from", cfg.init_from, None)
    return {"init_from": cfg.init_from, "init_from_sha256": digest}


def _mismatch(cfg: TrainConfig, exc: ValueError) -> ValueError:
    """A ``train.init_from`` that does not load as ``train.model`` (another architecture, an unreadable file): one
    error naming both."""
    m = cfg.model
    return ValueError(f"train.init_from={cfg.init_from} does not load as train.model (embed_dim={m.embed_dim}, "
                      f"depth={m.depth}, num_heads={m.num_heads}, patch_size={m.patch_size}, "
                      f"num_registers={m.num_registers}, ffn={m.ffn}): {exc}")


def _initial_backbone(ws: Workspace, cfg: TrainConfig) -> str | None:
    """The URI of the backbone every rank starts from (``train.init_from`` at ``train.model``), or None."""
    if not cfg.init_from:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            state = init_backbone_state(cfg.init_from, cfg.model, Path(tmp) / "init")
        except ValueError as exc:
            raise _mismatch(cfg, exc) from None
    publish_bytes(ws, {INIT_FILE: safetensors_bytes(state)})
    return ws.uri(INIT_FILE)


def _pass_through(ws: Workspace, cfg: TrainConfig, dataset: StageResult) -> StageResult:
    """``train.optim.total_steps=0``: ``train.init_from`` as the stage's output, no training (see the docstring)."""
    assert cfg.init_from is not None
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        try:
            loaded = load_model(cfg.init_from, local / "init", num_heads=cfg.model.num_heads, expected=cfg.model)
        except ValueError as exc:
            raise _mismatch(cfg, exc) from None
        network, model_cfg = loaded.network, loaded.model_cfg
        if isinstance(network, FrancaViT):  # at the configured size, as training would start from it
            network, model_cfg = resized_backbone(network, model_cfg, cfg.model.img_size)
        path = save_backbone(network.eval(), model_cfg, local / "backbone.safetensors",
                             train_config=cfg.model_dump(mode="json"))
        blob = path.read_bytes()
    publish_bytes(ws, {"backbone.safetensors": blob, "train_config.json": cfg.model_dump_json(indent=1).encode()})
    files = {"backbone": "backbone.safetensors", "train_config": "train_config.json"}
    stats = {"steps": 0, "layout": loaded.layout, "timm": loaded.timm_arch.name if loaded.timm_arch else None,
             "dataset_digest": dataset.digest, **_provenance(ws, cfg)}
    return ws.result(hashlib.sha256(blob).hexdigest(), files, stats)


@stage("pretrain", reads=("train",), files=("train.init_from",), operational=OPERATIONAL_FIELDS,
       inputs=("dataset",), retried=True)
def pretrain(cfg: PipelineConfig, ws: Workspace, dataset: StageResult) -> StageResult:
    """Pretrain Franca on the dataset's kept shards with Ray Train (from ``train.init_from`` when set); resumes an
    unfinished run of the same key. ``train.optim.total_steps=0`` passes ``train.init_from`` through untrained."""
    if cfg.train.optim.total_steps == 0:
        if not cfg.train.init_from:
            raise ValueError("train.optim.total_steps=0 trains nothing and train.init_from is not set: set it to the "
                             "weights to pass on (adapt, evaluate, register), or train for some steps")
        ws.fs.makedirs(ws.path, exist_ok=True)
        return _pass_through(ws, cfg.train, dataset)
    manifest = dataset.files.get("manifest", f"{dataset.uri.rstrip('/')}/manifest.parquet")
    ws.fs.makedirs(ws.path, exist_ok=True)
    result, state = fit("pretrain", cfg.train, ws, {"manifest": manifest}, init=_initial_backbone(ws, cfg.train))
    return _publish(ws, cfg.train, dataset, result, state)

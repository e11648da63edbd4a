"""Stage 6: high-resolution adaptation of the pretrained teacher (position grid resize + short training).

The run goes through the training stages' one Ray Train runner (``tasks/common/ray_train.py``), as pretraining
does: N workers (``train.num_workers``), checkpoints every ``train.checkpoint_every`` steps with the data position,
FailureConfig restarts, and a Ray run named for the stage's key inside its output folder, used under the stage's
lock, so a retried or re-run high-res resumes from its last checkpoint. Every worker starts from the pretrained
teacher backbone with its position grid resized (``init_backbone.safetensors``, written by this driver) and fresh
heads; the recipe is ``franca_core.highres.highres_train_config`` of the model's own train config, run with this
config's ``train`` operating fields (workers, devices, checkpoints, failures, logging).

Training images: ``highres.dataset`` (Parquet or ImageFolder; on a cluster, a path every node reads) when set, else
the dedup output's shards streamed as in pretraining. Output ``<root>/highres/<key>/``: ``backbone.safetensors``
(self-describing: architecture at the new size and the high-res train config in its metadata), ``checkpoint.pt``
(full trainer state, weights-only loadable) and ``history.json`` (logged losses), beside the Ray run (``ray/``).
A timm-only backbone (DINOv3's RoPE ViT, passed through by pretrain from ``train.init_from``) cannot be trained here:
with ``highres.steps=0`` it goes on unchanged (``backbone.safetensors`` only), otherwise the stage raises.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from franca_core.checkpoint import save_checkpoint
from franca_core.config import PipelineConfig, TrainConfig
from franca_core.highres import highres_train_config, load_initial_backbone, resized_backbone
from franca_core.models.backbone import build_backbone
from franca_core.models.io import save_backbone
from franca_core.train.trainer import FrancaTrainer
from tasks.common.contract import stage
from tasks.common.model_io import load_stage_model
from tasks.common.ray_train import OPERATIONAL_FIELDS, fit, publish_bytes, run_stats
from tasks.common.store import StageResult, Workspace

# How the high-res run is operated comes from this config's ``train`` section, not from the pretrained model's
# stored one (which gives the architecture, heads, losses and seed); the wall budget and ``init_from`` are
# pretraining's only (high-res starts from the model it adapts).
RUN_FIELDS = ("num_workers", "use_gpu", "precision", "cpus_per_worker", "loader_workers", "checkpoint_every",
              "checkpoint_every_minutes", "keep_checkpoints", "max_failures", "log_every", "fail_once_at_step",
              "grad_checkpointing", "dist_timeout_s", "monitor", "compile")


def base_train_config(cfg: PipelineConfig, stored: dict[str, Any] | None) -> TrainConfig:
    """The pretraining recipe the high-res phase continues: the model's stored train config (else ``cfg.train``)
    with this config's operating fields."""
    base = TrainConfig.model_validate(stored) if stored and "model" in stored else cfg.train
    run = {name: getattr(cfg.train, name) for name in RUN_FIELDS}
    return TrainConfig.model_validate({**base.model_dump(), **run, "max_minutes": None, "init_from": None})


def training_data(cfg: PipelineConfig, dataset: StageResult) -> dict[str, Any]:
    """What the high-res phase trains on (see the module docstring for the order of preference)."""
    h = cfg.highres
    if h.dataset:
        return {"dataset": str(Path(h.dataset).resolve()), "max_images": h.max_images}
    return {"manifest": dataset.files.get("manifest", f"{dataset.uri.rstrip('/')}/manifest.parquet")}


def _put(ws: Workspace, local: Path, names: dict[str, str]) -> None:
    """Copy files into the output folder under temp names, then move (no half-written file under a real name)."""
    for name in names.values():
        tmp = f"{ws.path}/.{name}.tmp"
        ws.fs.put(str(local / name), tmp)
        ws.fs.mv(tmp, f"{ws.path}/{name}")


@stage("highres", reads=("highres", "train"), files=("highres.dataset",), inputs=("model", "dataset"),
       operational=OPERATIONAL_FIELDS, retried=True)
def highres(cfg: PipelineConfig, ws: Workspace, model: StageResult, dataset: StageResult) -> StageResult:
    """Adapt ``model`` (a pretrain output) to ``highres.global_size``; returns the highres output (files: backbone,
    checkpoint, history). Resumes an unfinished run of the same key."""
    names = {"backbone": "backbone.safetensors", "checkpoint": "checkpoint.pt", "history": "history.json"}
    ws.fs.makedirs(ws.path, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        loaded = load_stage_model(model, local / "in", expected=cfg.train.model)
        if loaded.timm_arch is not None:  # e.g. DINOv3's RoPE ViT passed through by pretrain (train.init_from)
            if cfg.highres.steps:
                raise ValueError(f"highres.steps={cfg.highres.steps}: the model {model.uri} is a timm "
                                 f"{loaded.timm_arch.name} ({loaded.layout} layout), which high-res training cannot "
                                 "adapt (FrancaViT only); set highres.steps=0 to pass it on unchanged")
            # RoPE needs no position grid resize: the model passes on as it is
            save_backbone(loaded.network.eval(), loaded.model_cfg, local / names["backbone"],
                          train_config=loaded.train_config)
            _put(ws, local, {"backbone": names["backbone"]})
            out_digest = hashlib.sha256((local / names["backbone"]).read_bytes()).hexdigest()
            return ws.result(out_digest, {"backbone": names["backbone"]},
                             {"steps": 0, "global_size": None, "timm": loaded.timm_arch.name})
        base = base_train_config(cfg, loaded.train_config)
        hr_cfg = highres_train_config(base, cfg.highres)  # raises on sizes that are no multiple of the patch
        resized, _ = resized_backbone(loaded.backbone, base.model, cfg.highres.global_size)
        stats: dict[str, Any] = {}
        if cfg.highres.steps == 0:  # nothing to train: the resized teacher with fresh heads, in this process
            torch.manual_seed(hr_cfg.seed)
            trainer = FrancaTrainer(hr_cfg)
            load_initial_backbone(trainer, resized.state_dict())
            backbone, state, history = trainer.teacher.backbone, trainer.state_dict(), []
        else:
            init = {k: v.contiguous() for k, v in resized.state_dict().items()}
            publish_bytes(ws, {"init_backbone.safetensors": safetensors_bytes(init)})
            result, state = fit("highres", hr_cfg, ws, training_data(cfg, dataset),
                                init=ws.uri("init_backbone.safetensors"), history=True)
            backbone = build_backbone(hr_cfg.model, drop_path=0.0)
            backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in state["teacher"].items()
                                      if k.startswith("backbone.")})
            history = list(state["data"].get("history", []))
            stats = {**run_stats(ws, hr_cfg, result, state), "ray_run": ws.store.uri(result.path)}
        save_backbone(backbone.eval(), hr_cfg.model, local / names["backbone"],
                      train_config=hr_cfg.model_dump(mode="json"))
        save_checkpoint(state, local / names["checkpoint"])
        (local / names["history"]).write_text(json.dumps(history, indent=1))
        _put(ws, local, names)
        out_digest = hashlib.sha256((local / names["backbone"]).read_bytes()).hexdigest()
    seconds = state["data"].get("train_seconds", 0.0)
    stats |= {"steps": int(state["step"]), "seconds": round(seconds, 1), "global_size": cfg.highres.global_size,
              "loss_first": history[0]["loss"] if history else None,
              "loss_last": history[-1]["loss"] if history else None, "history": history}
    return ws.result(out_digest, names, stats)

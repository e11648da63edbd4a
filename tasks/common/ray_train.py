"""The one Ray Train runner of the training stages (pretrain, highres): a TorchTrainer per (stage, key), resumable.

A stage hands over what differs (its ``TrainConfig``, the data, the initial backbone, whether to keep the logged
metrics) and gets back Ray's ``Result`` and the final checkpoint's state; the worker function is
``tasks.common.train_loop.train_loop_per_worker``. The Ray run lives in the stage's output folder
(``<ws.path>/ray/<stage>-<key[:16]>``), which the stage uses only under its (stage, key) lock, so running the stage
again with the same config and inputs resumes the run from its latest checkpoint (Ray Train V2 resumes by
``RunConfig(storage_path, name)``) and two runs never train into one directory.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from franca_core.checkpoint import load_checkpoint
from franca_core.config import TrainConfig
from tasks.common.ray_session import ray_session
from tasks.common.store import StageStore, Workspace
from tasks.common.telemetry import log_loss_curve, worker_config
from tasks.common.train_loop import STATE_FILE, train_loop_per_worker

# Fields that change how a run is operated, not what it computes: they stay out of the key (and run name).
OPERATIONAL_FIELDS = ("train.log_every", "train.max_failures", "train.fail_once_at_step", "train.keep_checkpoints",
                      "train.cpus_per_worker", "train.grad_checkpointing", "train.dist_timeout_s", "train.monitor",
                      "train.compile")


def ray_storage(store: StageStore, path: str) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """Ray's storage_path (+ filesystem for remote roots, so s3fs options such as the endpoint apply)."""
    if store.fs.protocol in ("file", ("file", "local")):
        return path, None
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(store.fs))


def torch_config(cfg: TrainConfig) -> TorchConfig:
    """torch.distributed for the worker group: NCCL between GPUs, gloo on CPUs, collectives failing after
    ``train.dist_timeout_s`` (a rank stuck in one raises, and FailureConfig restarts the group from the checkpoint)."""
    return TorchConfig(backend="nccl" if cfg.use_gpu else "gloo", timeout_s=cfg.dist_timeout_s)


def run_name(stage: str, ws: Workspace) -> str:
    """The Ray run's name: the stage and its key, so a restart of the same (stage, key) resumes it."""
    return f"{stage}-{ws.digest[:16]}"


def build_trainer(stage: str, cfg: TrainConfig, ws: Workspace, data: dict[str, Any], init: str | None = None,
                  history: bool = False) -> TorchTrainer:
    """The TorchTrainer of one run (see ``train_loop_per_worker`` for ``data``, ``init`` and ``history``)."""
    storage_path, storage_fs = ray_storage(ws.store, f"{ws.path}/ray")
    return TorchTrainer(
        train_loop_per_worker,  # type: ignore[arg-type]  # Ray Train V2 returns rank 0's value (Result.return_value)
        train_loop_config={"stage": stage, "train": cfg.model_dump(mode="json"), "data": data, "init": init,
                           "history": history, "run_uri": ws.uri(), "storage_options": {},
                           "telemetry": worker_config(ws.run_id)},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker}),
        torch_config=torch_config(cfg),
        run_config=ray.train.RunConfig(
            name=run_name(stage, ws), storage_path=storage_path, storage_filesystem=storage_fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures)),
    )


def fit(stage: str, cfg: TrainConfig, ws: Workspace, data: dict[str, Any], init: str | None = None,
        history: bool = False) -> tuple[ray.train.Result, dict[str, Any]]:
    """Train (or resume) the run of ``ws`` on Ray; returns Ray's result and the final checkpoint's state."""
    ws.fs.makedirs(ws.path, exist_ok=True)
    with ray_session(math.ceil(cfg.num_workers * cfg.cpus_per_worker)):
        result = build_trainer(stage, cfg, ws, data, init, history).fit()
    log_loss_curve(ws.run_id, f"{stage} loss")
    if result.checkpoint is None:
        raise RuntimeError(f"the Ray run {result.path} finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = load_checkpoint(Path(folder) / STATE_FILE)
    return result, state


def publish_bytes(ws: Workspace, blobs: dict[str, bytes]) -> None:
    """Write files into the output folder, each under a temp name then moved: a crash leaves no half-written file
    under the real name (the stage's runner writes ``result.json`` last)."""
    for name, blob in blobs.items():
        tmp = f"{ws.path}/.{name}.{os.getpid()}.tmp"
        ws.fs.pipe(tmp, blob)
        ws.fs.mv(tmp, f"{ws.path}/{name}")


def run_stats(ws: Workspace, cfg: TrainConfig, result: ray.train.Result, state: dict[str, Any]) -> dict[str, Any]:
    """What both stages report of a run: steps, time, data position, throughput, losses, checkpoints, DDP digests."""
    summary = result.return_value or {}  # type: ignore[attr-defined]  # V2 attribute, untyped
    metrics = summary.get("metrics") or result.metrics or {}
    data = state["data"]
    checkpoints = [{"uri": ws.store.uri(c.path), "step": m.get("step"), "train_minutes": m.get("train_minutes")}
                   for c, m in (result.best_checkpoints or [])]
    return {"steps": int(state["step"]), "train_minutes": data.get("train_seconds", 0.0) / 60,
            "samples_seen": int(data.get("batches", 0)) * cfg.optim.batch_size * cfg.num_workers,
            "n_samples": summary.get("n_samples"), "resumed_from": summary.get("resumed_from"),
            "images_per_s": summary.get("attempt_images_per_s"), "data_digest": data.get("data_digest"),
            "loss": {k: v for k, v in metrics.items() if k.startswith(("loss", "dino", "ibot", "koleo"))},
            "world_size": cfg.num_workers, "checkpoints": checkpoints, "precision": summary.get("precision"),
            **{k: summary.get(k) for k in ("rank_weight_digests", "rank_data_digests", "rank_nodes")}}

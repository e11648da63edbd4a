"""Stage 4, pretrain: Franca on Ray Train over the kept shards of the dedup manifest (DESIGN.md, Stages).

The output folder ``<root>/pretrain/<key>/`` holds the Ray run (``ray/<name>/checkpoint_*/state.pt``), the final
teacher (``teacher.safetensors``: backbone + heads; ``backbone.safetensors``: what ``build_backbone(train.model)``
loads) and ``train_config.json``; ``result.json`` is written last. The Ray run name derives from the stage's key and
the run directory is used only under the stage's lock, so running the stage again with the same config and dataset
resumes the run from its latest checkpoint (Ray Train V2 resumes by ``RunConfig(storage_path, name)``) and two runs
never train into one directory.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import pyarrow.fs
import ray
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer
from safetensors.torch import save as safetensors_bytes

from franca_core.checkpoint import load_checkpoint
from franca_core.config import PipelineConfig, TrainConfig
from tasks.common.contract import stage
from tasks.common.ray_session import ray_session
from tasks.common.store import StageResult, StageStore, Workspace
from tasks.pretrain_loop import STATE_FILE, train_loop_per_worker

# Fields that change how a run is operated, not what it computes: they stay out of the key (and run name).
OPERATIONAL_FIELDS = ("train.log_every", "train.max_failures", "train.fail_once_at_step", "train.keep_checkpoints",
                      "train.cpus_per_worker", "train.grad_checkpointing", "train.dist_timeout_s")


def _ray_storage(store: StageStore, path: str) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """Ray's storage_path (+ filesystem for remote roots, so s3fs options such as the endpoint apply)."""
    if store.fs.protocol in ("file", ("file", "local")):
        return path, None
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(store.fs))


def torch_config(cfg: TrainConfig) -> TorchConfig:
    """torch.distributed for the worker group: NCCL between GPUs, gloo on CPUs, collectives failing after
    ``train.dist_timeout_s`` (a rank stuck in one raises, and FailureConfig restarts the group from the checkpoint)."""
    return TorchConfig(backend="nccl" if cfg.use_gpu else "gloo", timeout_s=cfg.dist_timeout_s)


def build_trainer(cfg: TrainConfig, manifest: str, ws: Workspace) -> TorchTrainer:
    """The TorchTrainer of one run; its name derives from the stage's key, so a restart resumes it."""
    storage_path, storage_fs = _ray_storage(ws.store, f"{ws.path}/ray")
    return TorchTrainer(
        train_loop_per_worker,  # type: ignore[arg-type]  # Ray Train V2 returns rank 0's value (Result.return_value)
        train_loop_config={"train": cfg.model_dump(mode="json"), "manifest": manifest, "run_uri": ws.uri(),
                           "storage_options": {}},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker}),
        torch_config=torch_config(cfg),
        run_config=ray.train.RunConfig(
            name=f"pretrain-{ws.digest[:16]}", storage_path=storage_path, storage_filesystem=storage_fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures)),
    )


def _publish(ws: Workspace, cfg: TrainConfig, dataset: StageResult, result: ray.train.Result) -> StageResult:
    """Write the final teacher and config next to the Ray run; the runner writes ``result.json`` last."""
    out, summary = ws.path, result.return_value or {}  # type: ignore[attr-defined]  # V2 attribute, untyped
    if result.checkpoint is None:
        raise RuntimeError(f"the Ray run {result.path} finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = load_checkpoint(Path(folder) / STATE_FILE)
    teacher = {k: v.contiguous() for k, v in state["teacher"].items()}
    blobs = {"teacher.safetensors": safetensors_bytes(teacher),
             "backbone.safetensors": safetensors_bytes({k.removeprefix("backbone."): v for k, v in teacher.items()
                                                        if k.startswith("backbone.")}),
             "train_config.json": cfg.model_dump_json(indent=1).encode()}
    for name, blob in blobs.items():  # temp name + move: a crash leaves no half-written file under the real name
        tmp = f"{out}/.{name}.{os.getpid()}.tmp"
        ws.fs.pipe(tmp, blob)
        ws.fs.mv(tmp, f"{out}/{name}")
    checkpoints = [{"uri": ws.store.uri(c.path), "step": m.get("step"), "train_minutes": m.get("train_minutes")}
                   for c, m in (result.best_checkpoints or [])]
    metrics = summary.get("metrics") or result.metrics or {}
    files = {"teacher": "teacher.safetensors", "backbone": "backbone.safetensors", "train_config": "train_config.json",
             "checkpoint": ws.store.uri(result.checkpoint.path), "ray_run": ws.store.uri(result.path)}
    stats = {"steps": int(state["step"]), "train_minutes": state["data"].get("train_seconds", 0.0) / 60,
             "samples_seen": int(state["data"].get("batches", 0)) * cfg.optim.batch_size * cfg.num_workers,
             "n_samples": summary.get("n_samples"), "resumed_from": summary.get("resumed_from"),
             "images_per_s": summary.get("attempt_images_per_s"), "data_digest": state["data"].get("data_digest"),
             "loss": {k: v for k, v in metrics.items() if k.startswith(("loss", "dino", "ibot", "koleo"))},
             "ln_k": math.log(cfg.heads.dino.n_prototypes), "dataset_digest": dataset.digest,
             "world_size": cfg.num_workers, "checkpoints": checkpoints, "precision": summary.get("precision"),
             **{k: summary.get(k) for k in ("rank_weight_digests", "rank_data_digests", "rank_nodes")}}
    return ws.result(hashlib.sha256(blobs["teacher.safetensors"]).hexdigest(), files, stats)


@stage("pretrain", reads=("train",), operational=OPERATIONAL_FIELDS, inputs=("dataset",), retried=True)
def pretrain(cfg: PipelineConfig, ws: Workspace, dataset: StageResult) -> StageResult:
    """Pretrain Franca on the dataset's kept shards with Ray Train; resumes an unfinished run of the same key."""
    manifest = dataset.files.get("manifest", f"{dataset.uri.rstrip('/')}/manifest.parquet")
    ws.fs.makedirs(ws.path, exist_ok=True)
    with ray_session(math.ceil(cfg.train.num_workers * cfg.train.cpus_per_worker)):
        result = build_trainer(cfg.train, manifest, ws).fit()
    return _publish(ws, cfg.train, dataset, result)

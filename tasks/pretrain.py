"""Stage 4, pretrain: Franca on Ray Train over the kept shards of the dedup manifest (DESIGN.md, Stages).

A plain function (the Prefect/MLflow wrapping lives elsewhere). The output folder ``<root>/pretrain/<input_digest>/``
holds the Ray run (``ray/<name>/checkpoint_*/state.pt``), the final teacher (``teacher.safetensors``: backbone +
heads; ``backbone.safetensors``: what ``build_backbone(train.model)`` loads) and ``train_config.json``; ``result.json``
is written last. The Ray run name derives from the input digest, so calling ``pretrain`` again with the same config
and dataset resumes the run from its latest checkpoint (Ray Train V2 resumes by ``RunConfig(storage_path, name)``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow.fs
import ray
import ray.train
from ray.train.torch import TorchTrainer
from safetensors.torch import save as safetensors_bytes

from franca_core.checkpoint import load_checkpoint
from franca_core.config import PipelineConfig, TrainConfig
from infra.offline import apply_offline_env, offline_env, ray_home
from tasks.pretrain_loop import STATE_FILE, train_loop_per_worker
from tasks.storage import StageResult, StageStore, input_digest

STAGE = "pretrain"
# Fields that change how a run is operated, not what it computes: they stay out of the digest (and run name).
OPERATIONAL_FIELDS = {"log_every", "max_failures", "fail_once_at_step", "keep_checkpoints", "cpus_per_worker"}
FORWARDED_ENV_PREFIXES = ("AWS_", "FSSPEC_")  # S3 endpoint and credentials reach the workers through the env


def run_identity(cfg: TrainConfig) -> dict[str, Any]:
    """The part of the train section that defines a run."""
    return {k: v for k, v in cfg.model_dump(mode="json").items() if k not in OPERATIONAL_FIELDS}


def quiet_ray_worker() -> None:
    """Ray worker setup hook: without the dashboard, Ray Train's placement-group cleaner cannot reach the state API
    and warns about it every second; that warning (and only it) is muted."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


@contextmanager
def ray_session(cfg: TrainConfig) -> Iterator[None]:
    """Use a running Ray (``ray.is_initialized()`` or ``RAY_ADDRESS``), else start a local one bound to 127.0.0.1."""
    if ray.is_initialized():
        yield
        return
    apply_offline_env()
    env = {**offline_env(), **{k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}}
    runtime_env = {"env_vars": env, "worker_process_setup_hook": f"{__name__}.quiet_ray_worker"}
    previous_sigint, previous_home = signal.getsignal(signal.SIGINT), os.environ.get("HOME")
    os.environ["HOME"] = str(ray_home())  # Ray's processes read ray_bootstrap_config.yaml from $HOME (STACK.md)
    try:
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=runtime_env, log_to_driver=True)
        else:  # "local": never attach to another `ray start` cluster found in /tmp/ray
            need = math.ceil(cfg.num_workers * cfg.cpus_per_worker)
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need), include_dashboard=False,
                     _node_ip_address="127.0.0.1", runtime_env=runtime_env)
        yield
    finally:
        if previous_home is not None:
            os.environ["HOME"] = previous_home
        ray.shutdown()
        signal.signal(signal.SIGINT, previous_sigint)  # Ray leaves its own handler behind


def _ray_storage(store: StageStore, path: str) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """Ray's storage_path (+ filesystem for remote roots, so s3fs options such as the endpoint apply)."""
    if store.fs.protocol in ("file", ("file", "local")):
        return path, None
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(store.fs))


def build_trainer(cfg: PipelineConfig, manifest: str, store: StageStore, digest: str) -> TorchTrainer:
    """The TorchTrainer of one run; its name derives from the input digest, so a restart resumes it."""
    t, out = cfg.train, store.path(STAGE, digest)
    storage_path, storage_fs = _ray_storage(store, f"{out}/ray")
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"pipeline": cfg.model_dump(mode="json"), "manifest": manifest, "run_uri": store.uri(out),
                           "storage_options": {}},
        scaling_config=ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                               resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=f"{STAGE}-{digest[:16]}", storage_path=storage_path, storage_filesystem=storage_fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures)),
    )


def _publish(store: StageStore, digest: str, cfg: PipelineConfig, dataset: StageResult,
             result: ray.train.Result) -> StageResult:
    """Write the final teacher and config next to the Ray run, then ``result.json`` (last)."""
    out, summary = store.path(STAGE, digest), result.return_value or {}
    with result.checkpoint.as_directory() as folder:
        state = load_checkpoint(Path(folder) / STATE_FILE)
    teacher = {k: v.contiguous() for k, v in state["teacher"].items()}
    blobs = {"teacher.safetensors": safetensors_bytes(teacher),
             "backbone.safetensors": safetensors_bytes({k.removeprefix("backbone."): v for k, v in teacher.items()
                                                        if k.startswith("backbone.")}),
             "train_config.json": cfg.train.model_dump_json(indent=1).encode()}
    for name, blob in blobs.items():  # temp name + move: a crash leaves no half-written file under the real name
        tmp = f"{out}/.{name}.{os.getpid()}.tmp"
        store.fs.pipe(tmp, blob)
        store.fs.mv(tmp, f"{out}/{name}")
    checkpoints = [{"uri": store.uri(c.path), "step": m.get("step"), "train_minutes": m.get("train_minutes")}
                   for c, m in (result.best_checkpoints or [])]
    metrics = summary.get("metrics") or result.metrics or {}
    files = {"teacher": f"{out}/teacher.safetensors", "backbone": f"{out}/backbone.safetensors",
             "train_config": f"{out}/train_config.json", "checkpoint": result.checkpoint.path, "ray_run": result.path}
    stats = {"steps": int(state["step"]), "train_minutes": state["data"].get("train_seconds", 0.0) / 60,
             "samples_seen": int(state["data"].get("batches", 0)) * cfg.train.optim.batch_size * cfg.train.num_workers,
             "n_samples": summary.get("n_samples"), "resumed_from": summary.get("resumed_from"),
             "images_per_s": summary.get("attempt_images_per_s"), "data_digest": state["data"].get("data_digest"),
             "loss": {k: v for k, v in metrics.items() if k.startswith(("loss", "dino", "ibot", "koleo"))},
             "ln_k": math.log(cfg.train.heads.dino.n_prototypes), "dataset_digest": dataset.digest,
             "world_size": cfg.train.num_workers, "checkpoints": checkpoints, "precision": summary.get("precision"),
             **{k: summary.get(k) for k in ("rank_weight_digests", "rank_data_digests", "rank_nodes")}}
    return store.publish(StageResult(
        stage=STAGE, uri=store.uri(out), input_digest=digest,
        digest=hashlib.sha256(blobs["teacher.safetensors"]).hexdigest(), stats=stats,
        files={k: store.uri(v) for k, v in files.items()}))


def pretrain(cfg: PipelineConfig, dataset: StageResult) -> StageResult:
    """Pretrain Franca on the dataset's kept shards with Ray Train; resumes an unfinished run of the same inputs."""
    store = StageStore(cfg.storage.root)
    digest = input_digest(run_identity(cfg.train), {"dataset": dataset.digest})
    if (done := store.load(STAGE, digest)) is not None:
        return done
    manifest = dataset.files.get("manifest", f"{dataset.uri.rstrip('/')}/manifest.parquet")
    store.fs.makedirs(store.path(STAGE, digest), exist_ok=True)
    with ray_session(cfg.train):
        result = build_trainer(cfg, manifest, store, digest).fit()
    return _publish(store, digest, cfg, dataset, result)

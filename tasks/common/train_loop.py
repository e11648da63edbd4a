"""The Ray Train worker function of the training stages (pretrain, highres): rebuild the config, resume, train,
checkpoint, report.

Follows the Ray Train docs idiom (STYLE.md habit 10): ``train_loop_per_worker(config)`` rebuilds the typed config,
resumes from ``ray.train.get_checkpoint()``, saves through a ``TemporaryDirectory`` + ``ray.train.report`` (rank 0
writes ``state.pt``, every rank reports, as often as the others) and leaves the method to ``franca_core``. The
checkpoint is ``FrancaTrainer.state_dict`` (student, teacher, optimiser, step, RNG, config) with the data position
(batches consumed per rank, training seconds, a running digest of the sample ids rank 0 consumed).

Decisions that depend on the clock (wall budget, time-based checkpoints) are all-reduced, so every rank takes them
at the same step and calls ``report`` the same number of times. The return value of rank 0 (``Result.return_value``)
summarises the run, including per-rank digests of the weights and of the data, which show DDP is in sync.

What differs between the stages comes in the loop's config (``tasks/common/ray_train.py`` builds it): the data
(``data``: a dedup ``manifest`` streamed from its shards, or a map-style image ``dataset``), the initial backbone
(``init``: safetensors the student and teacher backbones start from, e.g. the resized pretrained teacher; None: the
seeded random init) and whether the checkpoint keeps the logged metrics (``history``).
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from safetensors.torch import load as safetensors_load
from torch.utils.data import DataLoader

from franca_core.checkpoint import load_checkpoint, save_checkpoint
from franca_core.config import TrainConfig
from franca_core.data.dataset_stream import build_dataset_loader
from franca_core.data.datasets import ImageFolderDataset, ParquetImageDataset
from franca_core.data.shards import ShardIndex, build_loader, derive_seed
from franca_core.highres import load_initial_backbone
from franca_core.train.trainer import FrancaTrainer
from tasks.common.telemetry import TrainingTelemetry

STATE_FILE = "state.pt"
log = logging.getLogger("franca.train")  # Ray Train V2 routes print() twice (logger + tee); a logger once


@dataclass
class Progress:
    """The data position and clock of a run, as stored in the checkpoint's ``data`` entry."""

    batches: int = 0  # consumed by every rank (DDP keeps ranks in lockstep)
    train_seconds: float = 0.0
    data_digest: str = ""  # running sha256 over the sample ids rank 0 consumed, in order
    world_size: int = 1
    loader_workers: int = 0
    batch_size: int = 1
    seed: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # logged metrics, when the stage keeps them

    def consume(self, ids: torch.Tensor) -> None:
        self.batches += 1
        self.data_digest = hashlib.sha256(self.data_digest.encode() + ids.numpy().tobytes()).hexdigest()


def _resume(trainer: FrancaTrainer, cfg: TrainConfig, world: int) -> tuple[Progress, int | None]:
    """Load the latest checkpoint, if any; returns the progress and the step resumed from."""
    layout: dict[str, Any] = {"world_size": world, "loader_workers": cfg.loader_workers,
                              "batch_size": cfg.optim.batch_size, "seed": cfg.seed}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return Progress(**layout), None
    with checkpoint.as_directory() as folder:
        data = trainer.load_state_dict(load_checkpoint(Path(folder) / STATE_FILE))
    progress = Progress(**{**asdict(Progress()), **data})
    old = {k: getattr(progress, k) for k in layout}
    if old != layout:  # another layout: continue after the same number of samples; the order cannot be the same
        progress.batches = round(progress.batches * old["batch_size"] * old["world_size"] / (
            cfg.optim.batch_size * world))
        log.warning("data layout changed %s -> %s: the data order restarts after the same sample count", old, layout)
        progress = Progress(**{**asdict(progress), **layout})
    return progress, trainer.step


def _agree(flags: list[bool], device: torch.device) -> list[bool]:
    """True where any rank says True (clock-based decisions must be taken by every rank at the same step)."""
    if not dist.is_initialized():
        return flags
    t = torch.tensor(flags, dtype=torch.float32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def _mean(metrics: dict[str, float], device: torch.device) -> dict[str, float]:
    """Metrics averaged over ranks (each rank's loss is on its own share of the batch)."""
    if not dist.is_initialized():
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, (t / dist.get_world_size()).tolist()))


def _gather(value: str) -> list[str]:
    if not dist.is_initialized():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over a module's state (bitwise): equal on every rank iff DDP kept them in sync."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode() + tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _maybe_fail(cfg: TrainConfig, run_uri: str, step: int, rank: int, world: int) -> None:
    """Test-only (``train.fail_once_at_step``): the last rank raises once; a marker in the run folder says so."""
    if cfg.fail_once_at_step != step or rank != world - 1:
        return
    fs, path = fsspec.core.url_to_fs(f"{run_uri}/.failed_once_at_step_{step}")
    if fs.exists(path):
        return
    fs.pipe(path, b"1")
    raise RuntimeError(f"test-only failure at step {step} on rank {rank} (train.fail_once_at_step)")


def _save_and_report(trainer: FrancaTrainer, progress: Progress, metrics: dict[str, Any], rank: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = None
        if rank == 0:  # one full state; DDP ranks hold the same weights
            save_checkpoint(trainer.state_dict(asdict(progress)), Path(folder) / STATE_FILE)
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)
    if dist.is_initialized():
        # No rank runs ahead while rank 0 still persists the checkpoint: a rank failing in that window restarted the
        # group before the controller had registered it, and the run resumed from an older one (seen in the tests).
        dist.barrier()


def open_data(data: dict[str, Any], cfg: TrainConfig, rank: int, world: int, start_batches: int,
              storage_options: dict[str, Any] | None) -> tuple[DataLoader, int]:
    """The rank's batch loader, continued after ``start_batches``, and the number of samples in one epoch.

    ``data``: ``{"manifest": uri}`` (the kept shards of a dedup output) or ``{"dataset": path, "max_images": n}``
    (Parquet file or ImageFolder; ``max_images`` caps a Parquet set).
    """
    if data.get("manifest"):
        index = ShardIndex.from_manifest(data["manifest"], storage_options)
        return build_loader(index, cfg, rank, world, start_batches, storage_options), index.n_samples
    path = Path(data["dataset"])
    images = ImageFolderDataset(path) if path.is_dir() else ParquetImageDataset(path, limit=data.get("max_images"))
    return build_dataset_loader(images, cfg, rank, world, start_batches), len(images)


def _load_init(trainer: FrancaTrainer, uri: str) -> None:
    """Student and teacher backbones from a plain safetensors state (read through fsspec: local or remote)."""
    fs, path = fsspec.core.url_to_fs(uri)
    load_initial_backbone(trainer, safetensors_load(fs.cat_file(path)))


def _progress_line(m: dict[str, Any], total: int, budget_s: float | None, started: float, stage: str) -> str:
    step = m["step"]
    rate = (time.perf_counter() - started) / max(step - m["attempt_start_step"], 1)
    eta = (total - step) * rate
    if budget_s is not None:
        eta = min(eta, max(budget_s - m["train_minutes"] * 60, 0.0))
    return (f"[{stage}] step {step}/{total} epoch {m['epoch']:.2f} loss {m['loss']:.4f} (dino {m['dino']:.3f} "
            f"ibot {m['ibot']:.3f} koleo {m['koleo']:.3f}) lr {m['lr']:.2e} mom {m['momentum']:.4f} "
            f"T {m['teacher_temp']:.3f} | {m['images_per_s']:.1f} img/s | eta {eta / 60:.1f} min")


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Train one rank. ``config``: ``stage`` (for the log), ``train`` (TrainConfig JSON), ``data`` (see
    ``open_data``), ``init`` (initial backbone URI or None), ``history`` (keep logged metrics), ``run_uri``,
    ``storage_options``."""
    cfg, stage = TrainConfig.model_validate(config["train"]), config.get("stage", "pretrain")
    # Ray Train logs every report() at INFO with all its metrics; the progress line below says it in one line.
    logging.getLogger("ray.train.v2._internal.execution.context").setLevel(logging.WARNING)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    trainer = FrancaTrainer(cfg, world, wrap=ray.train.torch.prepare_model).to(device)  # TF32 on CUDA
    if config.get("init"):  # every rank loads the same weights; a checkpoint, if any, replaces them below
        _load_init(trainer, config["init"])
    progress, resumed_from = _resume(trainer, cfg, world)
    if rank == 0:
        log.info("[%s] forward passes in %s (train.precision: %s)", stage, trainer.precision, cfg.precision)
    if resumed_from is not None and rank == 0:
        log.info("[%s] resumed from checkpoint at step %d (%d batches per rank)", stage, resumed_from,
                 progress.batches)
    loader, n_samples = open_data(config["data"], cfg, rank, world, progress.batches, config.get("storage_options"))
    batches = iter(loader)
    telemetry = TrainingTelemetry.start(  # rank 0: live metrics and collapse monitors into the stage's MLflow run
        config.get("telemetry"), cfg, rank, stage, trainer,
        lambda c: open_data(config["data"], c, 0, 1, 0, config.get("storage_options"))[0])
    total, images_per_step = cfg.optim.total_steps, cfg.optim.batch_size * world
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes else None
    ckpt_every_s = cfg.checkpoint_every_minutes * 60 if cfg.checkpoint_every_minutes else math.inf
    next_time_ckpt = (math.floor(progress.train_seconds / ckpt_every_s) + 1) * ckpt_every_s
    started, attempt_start, base_seconds = time.perf_counter(), trainer.step, progress.train_seconds
    last_log, metrics = (started, trainer.step), {}
    # A restart of a run that already spent its budget does not train further (every rank restored the same clock).
    while trainer.step < total and not (budget_s is not None and progress.train_seconds >= budget_s):
        batch = next(batches)
        _maybe_fail(cfg, config["run_uri"], trainer.step + 1, rank, world)
        torch.manual_seed(derive_seed(cfg.seed, rank, trainer.step))  # RNG per (rank, step): resume-proof drop path
        # non_blocking: from the loader's pinned memory on CUDA the copy overlaps the step's launch (no-op on CPU)
        step_metrics = trainer.train_step({k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "ids"})
        telemetry.on_step(trainer)
        progress.consume(batch["ids"])
        progress.train_seconds = base_seconds + time.perf_counter() - started
        out_of_time, time_ckpt = _agree([budget_s is not None and progress.train_seconds >= budget_s,
                                         progress.train_seconds >= next_time_ckpt], device)
        last = trainer.step >= total or out_of_time
        ckpt = last or trainer.step % cfg.checkpoint_every == 0 or time_ckpt
        if not (ckpt or trainer.step % cfg.log_every == 0):
            continue
        now = time.perf_counter()
        metrics = {**_mean(step_metrics, device), "step": trainer.step, "train_minutes": progress.train_seconds / 60,
                   "epoch": progress.batches * images_per_step / n_samples, "attempt_start_step": attempt_start,
                   "images_per_s": (trainer.step - last_log[1]) * images_per_step / max(now - last_log[0], 1e-9)}
        last_log = (now, trainer.step)
        if config.get("history"):
            progress.history.append({k: v for k, v in metrics.items() if k != "attempt_start_step"}
                                    | {"seconds": progress.train_seconds})
        if rank == 0:
            log.info(_progress_line(metrics, total, budget_s, started, stage))
        telemetry.log(metrics)
        if ckpt:
            _save_and_report(trainer, progress, metrics, rank)
            while next_time_ckpt <= progress.train_seconds:
                next_time_ckpt += ckpt_every_s
        else:
            ray.train.report(metrics)
        if last:
            break
    attempt_s = time.perf_counter() - started
    telemetry.close(trainer)  # the last step's monitors, then what is still queued
    return {
        "step": trainer.step, "resumed_from": resumed_from, "metrics": metrics, "progress": asdict(progress),
        "precision": trainer.precision,
        "attempt_images_per_s": (trainer.step - attempt_start) * images_per_step / max(attempt_s, 1e-9),
        "rank_weight_digests": _gather(weights_digest(trainer.student_core)),
        "rank_data_digests": _gather(progress.data_digest), "n_samples": n_samples,
        "rank_nodes": _gather(ray.get_runtime_context().get_node_id()),
    }

"""One single-process pretraining run: seed, build the trainer, stream multi-crop batches, stop on a budget.

The plain-loop counterpart of the Ray Train worker loop (``tasks/common/train_loop.py``), for one process on one
device: ``franca train``, the pretraining of ``franca bench eval`` and the learning test all run through ``pretrain``.
Reference: the loop of ``nanoGPT/train.py`` and ``dinov2/train/train.py: do_train`` (without its distributed setup);
the step itself is ``FrancaTrainer.train_step``, the epoch loop ``franca_core.train.loop.run_steps``.

Example:
    >>> run = pretrain(cfg.train, ImageListDataset(images))          # doctest: +SKIP
    >>> run.steps, run.loss_last, run.save_checkpoint("out/checkpoint.pt")  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from franca_core.checkpoint import save_checkpoint
from franca_core.config import TrainConfig
from franca_core.data.multicrop_loader import multicrop_loader
from franca_core.models.backbone import build_backbone
from franca_core.train.loop import run_steps
from franca_core.train.trainer import FrancaTrainer

Metrics = dict[str, Any]


@dataclass(frozen=True)
class StepBudget:
    """When a run stops and how often it records its metrics.

    Attributes:
        steps: train until the trainer has taken this many steps.
        log_every: record (and report) the metrics every this many steps, and at the last one.
        max_seconds: stop earlier once the loop has run this long; ``None``: no wall budget.
    """

    steps: int
    log_every: int
    max_seconds: float | None = None

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> StepBudget:
        """``optim.total_steps``, ``log_every`` and ``max_minutes`` of the ``train`` section."""
        return cls(cfg.optim.total_steps, cfg.log_every, cfg.max_minutes * 60 if cfg.max_minutes else None)


@dataclass(frozen=True)
class PretrainRun:
    """A finished run: the trainer (student, EMA teacher, optimiser), its recorded metrics and its wall time.

    Attributes:
        trainer: the trainer after the last step; ``trainer.teacher.backbone`` is the pretrained backbone.
        history: the metrics recorded every ``log_every`` steps (``loss``, ``dino``, ``ibot``, ``koleo``, ``lr``, ...
            plus ``step``, ``epoch``, ``seconds`` and ``images_per_s``).
        seconds: wall time of the training loop (from the first batch's request to the last step).
    """

    trainer: FrancaTrainer
    history: list[Metrics]
    seconds: float

    @property
    def steps(self) -> int:
        """Steps taken (fewer than the budget's when the wall budget ran out)."""
        return self.trainer.step

    @property
    def loss_first(self) -> float | None:
        """The total loss at the first recorded step, ``None`` when nothing was recorded."""
        return self.history[0]["loss"] if self.history else None

    @property
    def loss_last(self) -> float | None:
        """The total loss at the last recorded step, ``None`` when nothing was recorded."""
        return self.history[-1]["loss"] if self.history else None

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write the trainer's full state (``FrancaTrainer.state_dict``) to ``path`` atomically; returns it."""
        return save_checkpoint(self.trainer.state_dict(), path)


def initial_backbone(cfg: TrainConfig) -> nn.Module:
    """The backbone ``pretrain(cfg, ...)`` starts its student from: the random-init baseline of a run.

    Built as ``pretrain`` builds the student (seeded with ``cfg.seed``, the backbone first), without stochastic depth.
    """
    torch.manual_seed(cfg.seed)
    return build_backbone(cfg.model, drop_path=0.0)


def training_device(cfg: TrainConfig) -> torch.device:
    """``cuda`` when ``train.use_gpu`` (the current CUDA device), else ``cpu``.

    Raises:
        RuntimeError: ``train.use_gpu`` is true and this process sees no CUDA device.
    """
    if not cfg.use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.use_gpu is true but torch.cuda.is_available() is false here: run on a CUDA "
                           "machine with a CUDA build of torch, or set train.use_gpu=false")
    return torch.device("cuda", torch.cuda.current_device())


def pretrain(cfg: TrainConfig, dataset: Dataset, budget: StepBudget | None = None,
             on_log: Callable[[Metrics], None] | None = None) -> PretrainRun:
    """Pretrain from scratch on ``dataset`` in this process; reproducible from ``cfg`` and the dataset alone.

    Seeds torch with ``cfg.seed``, builds the ``FrancaTrainer`` on ``training_device(cfg)`` (TF32 matmuls there on
    CUDA) and a shuffled multi-crop loader (``multicrop_loader``, shuffled by its own generator seeded with
    ``cfg.seed``; pinned batches on CUDA), then steps until the budget.

    Args:
        cfg: the ``train`` section of the pipeline config.
        dataset: a map-style dataset whose items are ``(PIL image, ...)`` or PIL images; at least one batch.
        budget: steps, logging interval and wall budget; default ``StepBudget.from_config(cfg)``.
        on_log: called with each recorded metrics dict (e.g. a progress line).

    Returns:
        The trained trainer, the recorded metrics and the loop's wall time.

    Raises:
        ValueError: ``dataset`` holds fewer images than one batch.
        RuntimeError: ``train.use_gpu`` without a CUDA device.
        FloatingPointError: the loss became non-finite.
    """
    budget = budget or StepBudget.from_config(cfg)
    torch.manual_seed(cfg.seed)
    device = training_device(cfg)
    trainer = FrancaTrainer(cfg).to(device)
    loader = multicrop_loader(cfg, dataset, device=device)
    start = time.perf_counter()
    history = run_steps(trainer, loader, budget.steps, on_log, budget.log_every, budget.max_seconds)
    return PretrainRun(trainer, history, time.perf_counter() - start)

"""A plain single-process training loop around ``FrancaTrainer`` (the Ray Train driver wraps the same step)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from franca_core.train.trainer import Batch, FrancaTrainer


def forever(loader: Iterable[Batch]) -> Iterator[tuple[int, Batch]]:
    """Cycle a DataLoader epoch after epoch, yielding (epoch, batch)."""
    epoch = 0
    while True:
        for batch in loader:
            yield epoch, batch
        epoch += 1


def run_steps(trainer: FrancaTrainer, loader: Iterable[Batch], until_step: int,
              on_log: Callable[[dict[str, Any]], None] | None = None, log_every: int = 50,
              max_seconds: float | None = None) -> list[dict[str, Any]]:
    """Train until ``trainer.step == until_step`` (or the wall budget) on the trainer's device; returns the logged
    metrics."""
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    images, device = 0, trainer.device
    for epoch, batch in forever(loader):
        if trainer.step >= until_step:
            break
        # non_blocking: a copy from pinned memory (multicrop_loader pins on CUDA) overlaps the step's launch
        metrics = trainer.train_step({k: v.to(device, non_blocking=True) for k, v in batch.items()})
        images += batch["global_crops"].shape[0] // 2
        if trainer.step % log_every == 0 or trainer.step == until_step:
            elapsed = time.perf_counter() - start
            metrics.update(step=trainer.step, epoch=epoch, seconds=elapsed, images_per_s=images / elapsed)
            history.append(metrics)
            if on_log is not None:
                on_log(metrics)
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    return history

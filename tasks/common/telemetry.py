"""Live training telemetry: rank 0 logs the step's metrics and the collapse monitors into the stage's MLflow run.

The stage's driver passes ``worker_config(ws.run_id)`` (its tracking URI and the stage run's id) to the training
loop; there, ``TrainingTelemetry.start`` returns a live instance on rank 0 and an inert one elsewhere (or when the
stage runs untracked). Metrics go out with ``MlflowClient.log_batch`` from a background thread, one batch per log
point (``train.log_every`` steps), so a slow or unreachable server never stalls a step, and a failure to log is a
warning, once, never an exception in the training loop.

Metric names: ``train/<key>`` (loss terms, lr, momentum, teacher temperature, images/s, ``train/step``,
``train/total_steps``, ``train/eta_s``) and ``monitor/<key>`` (``franca_core.train.monitors``), each with
``step=``; the MLflow UI draws one section per prefix. After the run, ``log_loss_curve`` draws the run's own
``train/*`` loss history into ``loss_curve.png`` beside the stage's other artifacts.
"""

from __future__ import annotations

import logging
import math
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric

from franca_core.config import TrainConfig
from franca_core.eval.plots import plot_loss_curve
from franca_core.train.monitors import collapse_monitors
from franca_core.train.trainer import Batch, FrancaTrainer

TRAIN, MONITOR = "train/", "monitor/"
LOSS_KEYS = ("loss", "dino", "ibot", "koleo")
_SKIP = ("step", "attempt_start_step")  # bookkeeping of the loop, not metrics
log = logging.getLogger("franca.telemetry")


def worker_config(run_id: str) -> dict[str, str]:
    """What the training loop needs to log into the stage's run (empty when the stage runs untracked)."""
    return {"tracking_uri": mlflow.get_tracking_uri(), "run_id": run_id} if run_id else {}


class MetricSink:
    """``log_batch`` calls on a background thread; errors are logged once as a warning and otherwise dropped."""

    def __init__(self, tracking_uri: str, run_id: str, stage: str) -> None:
        self.client, self.run_id, self.stage = MlflowClient(tracking_uri), run_id, stage
        self._queue: queue.Queue[list[Metric] | None] = queue.Queue()
        self._warned = False
        self._thread = threading.Thread(target=self._drain, name=f"{stage}-telemetry", daemon=True)
        self._thread.start()

    def put(self, step: int, values: Mapping[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(step)) for k, v in values.items() if math.isfinite(float(v))]
        if metrics:
            self._queue.put(metrics)

    def _drain(self) -> None:
        while (batch := self._queue.get()) is not None:
            try:
                for i in range(0, len(batch), 1000):  # MLflow's log_batch limit
                    self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])
            except Exception as e:  # noqa: BLE001 - telemetry must never stop training
                if not self._warned:
                    self._warned = True
                    log.warning("[%s] live metrics to MLflow run %s failed (%s: %s); training goes on, later "
                                "failures are not reported", self.stage, self.run_id, type(e).__name__, e)

    def close(self, timeout_s: float = 30.0) -> None:
        """Send what is queued (waiting at most ``timeout_s``) and stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout_s)


class TrainingTelemetry:
    """Rank 0's live metrics and collapse monitors of one training attempt; inert without a sink."""

    def __init__(self, sink: MetricSink | None, cfg: TrainConfig, trainer: FrancaTrainer | None = None,
                 monitor_images: Callable[[], torch.Tensor] | None = None) -> None:
        self.sink, self.cfg = sink, cfg
        self.total = cfg.optim.total_steps
        self.start_step = trainer.step if trainer is not None else 0
        self.started = time.perf_counter()
        self._images_fn: Callable[[], torch.Tensor] | None = monitor_images
        self._images: torch.Tensor | None = None
        self._monitored = -1
        self._monitor_warned = False
        if trainer is not None:
            self.on_step(trainer, force=True)  # the state this attempt starts from: random init or the checkpoint

    @classmethod
    def start(cls, config: Mapping[str, Any] | None, cfg: TrainConfig, rank: int, stage: str,
              trainer: FrancaTrainer | None = None,
              loader_of: Callable[[TrainConfig], Iterable[Batch]] | None = None) -> TrainingTelemetry:
        """A live instance on rank 0 when ``config`` (``worker_config``) names a run, else an inert one; with
        ``trainer`` and ``loader_of`` (see ``monitor_images``) it runs the collapse monitors, first right away."""
        config = config or {}
        if rank != 0 or not config.get("run_id"):
            return cls(None, cfg)
        sink = MetricSink(config["tracking_uri"], config["run_id"], stage)
        images = (lambda: monitor_images(loader_of, cfg)) if loader_of is not None and cfg.monitor.every else None
        return cls(sink, cfg, trainer, images)

    def log(self, metrics: Mapping[str, Any]) -> None:
        """The metrics of one log point (``step`` among them) as ``train/*``, with the time left."""
        if self.sink is None:
            return
        step = int(metrics["step"])
        values = {f"{TRAIN}{k}": float(v) for k, v in metrics.items()
                  if k not in _SKIP and isinstance(v, int | float) and not isinstance(v, bool)}
        values.update({f"{TRAIN}step": step, f"{TRAIN}total_steps": self.total, f"{TRAIN}eta_s": self.eta_s(metrics)})
        self.sink.put(step, values)

    def eta_s(self, metrics: Mapping[str, Any]) -> float:
        """Seconds left at this attempt's pace, capped by what is left of ``train.max_minutes``."""
        step = int(metrics["step"])
        rate = (time.perf_counter() - self.started) / max(step - self.start_step, 1)
        eta = (self.total - step) * rate
        if self.cfg.max_minutes and "train_minutes" in metrics:
            eta = min(eta, max(self.cfg.max_minutes * 60 - float(metrics["train_minutes"]) * 60, 0.0))
        return eta

    def on_step(self, trainer: FrancaTrainer, force: bool = False) -> None:
        """The collapse monitors, when ``train.monitor.every`` divides the step (or ``force``)."""
        every = self.cfg.monitor.every
        if self.sink is None or self._images_fn is None or self._monitored == trainer.step:
            return
        if not force and trainer.step % every and trainer.step < self.total:
            return
        self._monitored = trainer.step
        try:
            if self._images is None:
                self._images = self._images_fn()
            with trainer.autocast():
                values = collapse_monitors(trainer.teacher.backbone, self._images)
        except Exception as e:  # noqa: BLE001 - a monitor must never stop training
            if not self._monitor_warned:
                self._monitor_warned = True
                log.warning("collapse monitors failed at step %d (%s: %s); training goes on",
                            trainer.step, type(e).__name__, e)
            return
        self.sink.put(trainer.step, {f"{MONITOR}{k}": v for k, v in values.items()})

    def close(self, trainer: FrancaTrainer | None = None) -> None:
        """The monitors at the last step (if not measured there) and a flush of what is queued."""
        if self.sink is None:
            return
        if trainer is not None:
            self.on_step(trainer, force=True)
        self.sink.close()


def monitor_images(loader_of: Callable[[TrainConfig], Iterable[Batch]], cfg: TrainConfig) -> torch.Tensor:
    """The monitors' fixed batch: up to ``train.monitor.batch`` distinct images, two global crops each (2N, 3, H, W).

    ``loader_of(cfg)`` is the stage's own data (the loop's loader of one rank for a given config); it is asked for
    one batch in an order and with crops of its own (seed + 1, one process, no local crops), the same for every
    attempt of the run. Pretraining has no held-out split, so these images are also among the training images.
    """
    own = cfg.model_copy(update={"loader_workers": 0, "seed": cfg.seed + 1,
                                 "optim": cfg.optim.model_copy(update={"batch_size": cfg.monitor.batch}),
                                 "crops": cfg.crops.model_copy(update={"n_local": 0})})
    batch = next(iter(loader_of(own)))
    crops, ids = batch["global_crops"], batch["ids"].tolist()
    first = [ids.index(i) for i in dict.fromkeys(ids)]  # a set smaller than the batch wraps into its next epoch
    n = len(ids)
    return torch.cat([crops[first], crops[[n + i for i in first]]])


def log_loss_curve(run_id: str, title: str) -> None:
    """``loss_curve.png`` in the run: its ``train/`` loss terms per step as logged (a failure is a warning)."""
    if not run_id:
        return
    try:
        client = MlflowClient(mlflow.get_tracking_uri())
        series = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, f"{TRAIN}{k}")] for k in LOSS_KEYS}
        series = {k: sorted(v) for k, v in series.items() if v}
        if not series:
            return
        with tempfile.TemporaryDirectory() as tmp:
            client.log_artifact(run_id, str(plot_loss_curve(series, Path(tmp) / "loss_curve.png", title)))
    except Exception as e:  # noqa: BLE001 - a picture must never fail a finished stage
        log.warning("loss curve of run %s not logged (%s: %s)", run_id, type(e).__name__, e)

"""Rank 0's training telemetry: which metrics go out at which step, the monitors' fixed batch, and a tracking server
that cannot be reached (a warning, once; training goes on)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import pytest
import torch

from franca_core.config import TrainConfig, load_config
from franca_core.train.trainer import FrancaTrainer
from tasks.common.telemetry import MetricSink, TrainingTelemetry, monitor_images


class Recorder:
    """Stands in for the MLflow sink: what would have been sent, per step."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, dict[str, float]]] = []
        self.closed = False

    def put(self, step: int, values: Mapping[str, float]) -> None:
        self.sent.append((step, dict(values)))

    def close(self) -> None:
        self.closed = True


def _cfg(*extra: str) -> TrainConfig:
    return load_config("tiny", ["train.model.img_size=32", "train.crops.global_size=32", "train.optim.total_steps=7",
                                "train.monitor.every=3", "train.monitor.batch=6", "train.precision=fp32",
                                *extra]).train


def _loader_of(seen: list[TrainConfig]):  # type: ignore[no-untyped-def]
    def loader(cfg: TrainConfig):  # type: ignore[no-untyped-def]
        seen.append(cfg)
        n = cfg.optim.batch_size
        ids = torch.tensor([0, 1, 2, 3, 0, 1][:n])  # a set of 4 images wraps into its next epoch
        crops = torch.arange(2 * n, dtype=torch.float32).view(-1, 1, 1, 1).expand(2 * n, 3, 32, 32)
        yield {"global_crops": crops, "ids": ids}
    return loader


def test_monitor_images__distinct_images_two_views_each_from_a_config_of_their_own() -> None:
    seen: list[TrainConfig] = []
    cfg = _cfg()
    images = monitor_images(_loader_of(seen), cfg)
    (own,) = seen
    assert own.optim.batch_size == 6 and own.seed == cfg.seed + 1 and own.loader_workers == 0
    assert own.crops.n_local == 0
    # crop-major: views 0 of ids 0..3 (rows 0..3), then their views 1 (rows 6..9)
    assert images[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 6, 7, 8, 9]


def test_telemetry__monitors_at_start_every_n_and_last_step_metrics_at_log_points() -> None:
    cfg = _cfg()
    torch.manual_seed(0)
    trainer = FrancaTrainer(cfg)
    sink = Recorder()
    images = monitor_images(_loader_of([]), cfg)
    tele = TrainingTelemetry(sink, cfg, trainer, lambda: images)  # type: ignore[arg-type]
    for step in range(1, 8):
        trainer.step = step
        tele.on_step(trainer)
        if step % 2 == 0:
            tele.log({"step": step, "loss": 3.0 - step / 10, "lr": 1e-3, "teacher_temp": 0.04, "images_per_s": 50.0,
                      "attempt_start_step": 0, "train_minutes": 0.1})
    tele.close(trainer)
    monitored = [step for step, values in sink.sent if "monitor/rankme" in values]
    assert monitored == [0, 3, 6, 7] and sink.closed
    logged = {step: values for step, values in sink.sent if "train/loss" in values}
    assert sorted(logged) == [2, 4, 6]
    assert {"train/loss", "train/lr", "train/teacher_temp", "train/images_per_s", "train/step", "train/total_steps",
            "train/eta_s"} == set(logged[4]) - {"train/train_minutes"}
    assert logged[6]["train/total_steps"] == 7 and logged[6]["train/eta_s"] >= 0
    first = dict(sink.sent)[0]
    assert 1 <= first["monitor/rankme"] <= first["monitor/rankme_max"] == 8
    assert first["monitor/knn_view_chance"] == pytest.approx(1 / 4)


def test_telemetry__inert_off_rank_0_or_untracked() -> None:
    cfg = _cfg()
    assert TrainingTelemetry.start({"tracking_uri": "http://127.0.0.2:9", "run_id": "r"}, cfg, 1, "pretrain").sink \
        is None
    assert TrainingTelemetry.start({}, cfg, 0, "pretrain").sink is None
    TrainingTelemetry.start(None, cfg, 0, "pretrain").log({"step": 1, "loss": 1.0})  # nothing to do, no error


def test_metric_sink__an_unreachable_server_is_one_warning_never_an_exception(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    sink = MetricSink("http://127.0.0.2:9", "0" * 32, "pretrain")
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="franca.telemetry"):
        for step in range(3):
            sink.put(step, {"train/loss": 1.0, "train/nan": float("nan")})
        sink.close(timeout_s=60)
    assert time.perf_counter() - t0 < 60
    warnings = [r for r in caplog.records if r.name == "franca.telemetry"]
    assert len(warnings) == 1 and "live metrics to MLflow run" in warnings[0].getMessage()

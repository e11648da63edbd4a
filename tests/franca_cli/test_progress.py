"""Progress lines of ``franca demo`` / ``franca run``: the formatter, the poller, and the MLflow source on a real
(SQLite) tracking store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from franca_cli.progress import ProgressPoller, Snapshot, mlflow_source, progress_line

LIVE = {"train/step": 120.0, "train/total_steps": 200.0, "train/loss": 7.81234, "train/images_per_s": 41.54,
        "train/eta_s": 78.0, "monitor/rankme": 11.23, "monitor/knn_view_top1": 0.34}


def test_progress_line__step_loss_throughput_time_left_and_monitors() -> None:
    line = progress_line(Snapshot("r", "pretrain", LIVE))
    assert line == "[pretrain] step 120/200 | loss 7.8123 | 41.5 img/s | 78 s left | RankMe 11.2 | view k-NN 34 %"
    assert progress_line(Snapshot("r", "highres", {"train/step": 3.0, "train/eta_s": 600.0})) == \
        "[highres] step 3 | 10.0 min left"
    assert progress_line(Snapshot("r", "pretrain", {"stage_compute_s": 1.0})) is None


def test_poller__one_line_per_new_step_or_run_and_none_while_idle() -> None:
    feed: list[Snapshot | None] = [None, Snapshot("a", "pretrain", LIVE), Snapshot("a", "pretrain", LIVE),
                                   Snapshot("a", "pretrain", {**LIVE, "train/step": 140.0}),
                                   Snapshot("b", "highres", {**LIVE, "train/step": 140.0})]
    lines: list[str] = []
    poller = ProgressPoller(lambda: feed.pop(0), lines.append)
    for _ in range(5):
        poller.poll()
    assert [line.split(" |")[0] for line in lines] == ["[pretrain] step 120/200", "[pretrain] step 140/200",
                                                        "[highres] step 140/200"]


def test_poller_run__polls_on_the_injected_clock_and_survives_a_failing_source() -> None:
    calls: list[float] = []
    ticks = iter([False, False, False, True])

    def source() -> Snapshot | None:
        if len(calls) < 2:
            calls.append(1.0)
            raise ConnectionError("server restarting")
        return Snapshot("a", "pretrain", LIVE)

    lines: list[str] = []
    waited: list[float] = []
    ProgressPoller(source, lines.append).run(lambda s: waited.append(s) or next(ticks), 2.5)
    assert waited == [2.5] * 4
    assert lines[0].startswith("(progress lines unavailable for now: ConnectionError") and len(lines) == 2
    assert lines[1].startswith("[pretrain] step 120/200")


def test_mlflow_source__newest_running_stage_run_with_live_metrics(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert mlflow_source(uri, 0)() is None  # no store yet: nothing read, nothing created
    assert not (tmp_path / "mlflow.db").exists()
    since = int(time.time() * 1000)
    c = MlflowClient(uri)
    exp = c.create_experiment("franca")
    stage = {"franca.kind": "stage", "franca.stage": "pretrain"}
    finished = c.create_run(exp, run_name="pretrain", tags=stage)
    c.log_metric(finished.info.run_id, "train/step", 4, step=4)
    c.set_terminated(finished.info.run_id)
    source = mlflow_source(uri, since)
    assert source() is None
    live = c.create_run(exp, run_name="pretrain", tags=stage)
    assert source() is None  # running, but no step logged yet
    now = int(time.time() * 1000)
    c.log_batch(live.info.run_id, metrics=[Metric(k, v, now, 120) for k, v in LIVE.items()])
    snap = source()
    assert snap is not None and snap.run_id == live.info.run_id and snap.stage == "pretrain"
    assert snap.metrics["train/step"] == 120.0
    assert mlflow_source(uri, now + 60_000)() is None  # started before the command: not this command's run

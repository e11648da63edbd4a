"""Progress lines of the running training stage while ``franca demo`` / ``franca run`` wait on a flow run.

The training loop's rank 0 logs live metrics into its stage's MLflow run (``tasks/common/telemetry.py``); the CLI
reads them back from the same tracking server: every few seconds, the newest RUNNING stage run started after the
command began, one line whenever its ``train/step`` advanced:

    [pretrain] step 120/200 | loss 7.8123 | 41.5 img/s | 1.3 min left | RankMe 11.2 | view k-NN 34 %

This works wherever the flow runs (the Prefect worker of ``make demo`` is another process whose output goes to the
stack's log file), needs no access to Prefect's logs, and costs one or two small MLflow requests a poll.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

STAGE_TAG = "franca.stage"


@dataclass(frozen=True)
class Snapshot:
    """The live metrics of one stage run (latest value of each)."""

    run_id: str
    stage: str
    metrics: Mapping[str, float]


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def progress_line(snap: Snapshot) -> str | None:
    """One line of a snapshot (None before its first logged step)."""
    m = snap.metrics
    if "train/step" not in m:
        return None
    total = m.get("train/total_steps")
    parts = [f"[{snap.stage}] step {int(m['train/step'])}" + (f"/{int(total)}" if total else "")]
    if "train/loss" in m:
        parts.append(f"loss {m['train/loss']:.4f}")
    if "train/images_per_s" in m:
        parts.append(f"{m['train/images_per_s']:.1f} img/s")
    if "train/eta_s" in m:
        parts.append(f"{_duration(m['train/eta_s'])} left")
    if "monitor/rankme" in m:
        parts.append(f"RankMe {m['monitor/rankme']:.1f}")
    if "monitor/knn_view_top1" in m:
        parts.append(f"view k-NN {100 * m['monitor/knn_view_top1']:.0f} %")
    return " | ".join(parts)


class ProgressPoller:
    """Emits a line whenever the source's (run, step) changes; ``poll`` once, or ``run`` until stopped.

    Args:
        source: returns the current snapshot, or None when no training stage is running.
        emit: where lines go (e.g. stderr).
    """

    def __init__(self, source: Callable[[], Snapshot | None], emit: Callable[[str], None]) -> None:
        self.source, self.emit = source, emit
        self._last: tuple[str, float] | None = None
        self._failed = False

    def poll(self) -> str | None:
        snap = self.source()
        if snap is None or "train/step" not in snap.metrics:
            return None
        key = (snap.run_id, snap.metrics["train/step"])
        if key == self._last:
            return None
        self._last = key
        line = progress_line(snap)
        if line:
            self.emit(line)
        return line

    def run(self, wait: Callable[[float], bool], interval_s: float) -> None:
        """Poll every ``interval_s`` until ``wait`` (``threading.Event.wait``-like: waits, says whether to stop)
        returns True; a failing source is reported once, then retried."""
        while not wait(interval_s):
            try:
                self.poll()
            except Exception as e:  # noqa: BLE001 - progress lines are a courtesy; the wait goes on without them
                if not self._failed:
                    self._failed = True
                    self.emit(f"(progress lines unavailable for now: {type(e).__name__}: {e})")


def _sqlite_ready(uri: str) -> bool:
    """A SQLite tracking store that the flow has finished creating (reading it earlier would create it twice)."""
    path = Path(uri.removeprefix("sqlite:///"))
    if not path.is_file():
        return False
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return bool(db.execute("SELECT version_num FROM alembic_version").fetchone())
    except sqlite3.Error:
        return False


def mlflow_source(tracking_uri: str, since_ms: int) -> Callable[[], Snapshot | None]:
    """The newest RUNNING stage run with live metrics, started at or after ``since_ms`` (epoch ms)."""
    from mlflow import MlflowClient

    client: list[MlflowClient] = []

    def newest() -> Snapshot | None:
        if not client:
            if tracking_uri.startswith("sqlite:///") and not _sqlite_ready(tracking_uri):
                return None
            client.append(MlflowClient(tracking_uri))
        c = client[0]
        experiments = [e.experiment_id for e in c.search_experiments()]
        if not experiments:
            return None
        runs = c.search_runs(experiments, f"attributes.status = 'RUNNING' and attributes.start_time >= {since_ms} "
                             "and tags.`franca.kind` = 'stage'", order_by=["attributes.start_time DESC"],
                             max_results=5)
        for run in runs:
            if "train/step" in run.data.metrics:
                return Snapshot(run.info.run_id, run.data.tags.get(STAGE_TAG, run.info.run_name or "stage"),
                                run.data.metrics)
        return None

    return newest


@contextmanager
def printing_progress(tracking_uri: str, emit: Callable[[str], None], interval_s: float = 5.0,
                      since_ms: int | None = None) -> Iterator[ProgressPoller]:
    """Print progress lines on a daemon thread for the duration of the ``with`` block."""
    since = int(time.time() * 1000) if since_ms is None else since_ms
    poller = ProgressPoller(mlflow_source(tracking_uri, since), emit)
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop.wait, interval_s), name="franca-progress", daemon=True)
    thread.start()
    try:
        yield poller
    finally:
        stop.set()
        thread.join(timeout=interval_s + 10)

"""Stage locks (tasks/common/locks.py): one holder, waiters wait, a dead holder's lock is taken over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tasks.common.locks import LockTimeout, StageLock, stage_lock
from tasks.common.store import StageStore


def test_stage_lock__second_holder_waits_until_the_first_releases(tmp_path: Path) -> None:
    store, order = StageStore(str(tmp_path)), []

    def second() -> None:
        with stage_lock(store, "dedup", "k" * 64):
            order.append("second")

    with stage_lock(store, "dedup", "k" * 64):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.5)
        order.append("first done")
    t.join(timeout=10)
    assert order == ["first done", "second"] and not list((tmp_path / "dedup").glob(".lock-*"))


def test_stage_lock__times_out_naming_the_holder(tmp_path: Path) -> None:
    store = StageStore(str(tmp_path))
    with stage_lock(store, "dedup", "k" * 64):
        with pytest.raises(LockTimeout, match=f"'pid': {os.getpid()}"):
            StageLock(store, "dedup", "k" * 64).acquire(timeout_s=0.5)


def test_stage_lock__a_dead_holders_lock_is_taken_over(tmp_path: Path) -> None:
    store = StageStore(str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / "dedup" / f".lock-{'k' * 64}"
    lock.parent.mkdir(parents=True)
    import socket
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "token": "old"}))
    start = time.monotonic()
    with stage_lock(store, "dedup", "k" * 64):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert time.monotonic() - start < 5


def test_stage_lock__a_lock_without_heartbeat_is_stale(tmp_path: Path) -> None:
    store = StageStore(str(tmp_path))
    lock = tmp_path / "dedup" / f".lock-{'k' * 64}"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": "another-host", "pid": 1, "token": "old"}))
    old = time.time() - 3600
    os.utime(lock, (old, old))
    with stage_lock(store, "dedup", "k" * 64, stale_after_s=60):
        assert json.loads(lock.read_text())["host"] != "another-host"

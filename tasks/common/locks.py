"""One writer per (stage, key): a lock file beside the output, with stale-lock recovery.

Local roots: ``<root>/<stage>/.lock-<key>`` created with ``O_CREAT | O_EXCL`` (atomic on local disks and NFSv3+). It
holds the holder's host, pid and a token; the holder touches it every ``heartbeat_s`` seconds. A waiter takes over a
lock whose holder is a dead process on this host, or whose heartbeat is older than ``stale_after_s`` (a holder on
another host that died); it re-reads the token right before removing it, so it never removes a lock that was just
taken by someone else (a narrow race remains between that read and the unlink; the holder's re-check of the output
after locking makes it harmless).

S3 roots: the same lock object written with a conditional PUT (``If-None-Match: *``), which S3 and S3-compatible
servers refuse when the object exists; the heartbeat rewrites it; staleness by its ``LastModified``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from tasks.common.store import StageStore


class LockTimeout(TimeoutError):
    """Another run held the lock longer than the caller was willing to wait."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StageLock:
    """The lock of one (stage, key) in one store; use ``stage_lock`` (a context manager)."""

    def __init__(self, store: StageStore, stage: str, digest: str, stale_after_s: float = 120.0,
                 heartbeat_s: float = 10.0) -> None:
        self.store, self.stale_after_s, self.heartbeat_s = store, stale_after_s, heartbeat_s
        self.path = f"{store.base}/{stage}/.lock-{digest}"
        self.token = uuid.uuid4().hex
        self.body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                                "since": time.time()}).encode()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ----------------------------------------------------------------------------------- create / inspect
    def _create(self) -> bool:
        fs = self.store.fs
        if self.store.local:
            fs.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(self.body)
            return True
        try:
            fs.pipe_file(self.path, self.body, IfNoneMatch="*")
        except (FileExistsError, OSError) as exc:  # 412 Precondition Failed (or 409 on a concurrent write)
            if "412" in str(exc) or "Precondition" in str(exc) or "409" in str(exc) or isinstance(exc, FileExistsError):
                return False
            raise
        return True

    def _holder(self) -> tuple[dict[str, Any], float] | None:
        """(the lock's content, seconds since its last heartbeat), or None when there is no lock."""
        fs = self.store.fs
        try:
            if self.store.local:
                age = time.time() - os.stat(self.path).st_mtime
                with open(self.path, "rb") as f:
                    raw = f.read()
            else:
                fs.invalidate_cache(self.path)  # another run writes it: never judge it from a cached listing
                info = fs.info(self.path)
                modified = info.get("LastModified")
                age = (datetime.now(UTC) - modified).total_seconds() if isinstance(modified, datetime) else 0.0
                raw = fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        try:
            return json.loads(raw), age
        except ValueError:  # a holder died between creating and writing it: judge by age alone
            return {}, age

    def _stale(self, holder: dict[str, Any], age: float) -> bool:
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            if not _pid_alive(holder["pid"]):
                return True
        return age > self.stale_after_s

    def _break(self, holder: dict[str, Any]) -> None:
        again = self._holder()
        if again is not None and again[0].get("token") == holder.get("token"):
            try:
                self.store.fs.rm(self.path)
            except FileNotFoundError:
                pass

    # ----------------------------------------------------------------------------------------- acquire
    def acquire(self, timeout_s: float | None = None, on_wait: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Take the lock, waiting for a live holder and breaking a stale one."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay, told = 0.2, False
        while not self._create():
            found = self._holder()
            if found is not None:
                holder, age = found
                if self._stale(holder, age):
                    self._break(holder)
                    continue
                if on_wait is not None and not told:
                    on_wait(holder)
                    told = True
            if deadline is not None and time.monotonic() > deadline:
                raise LockTimeout(f"{self.path} is held by {found[0] if found else 'another run'} for more than "
                                  f"{timeout_s:.0f} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)
        self._beat = threading.Thread(target=self._heartbeat, name="stage-lock-heartbeat", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if self.store.local:
                    os.utime(self.path)
                else:
                    self.store.fs.pipe_file(self.path, self.body)
            except OSError:
                pass

    def release(self) -> None:
        """Stop the heartbeat and remove the lock (only if it is still ours)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        found = self._holder()
        if found is not None and found[0].get("token") == self.token:
            try:
                self.store.fs.rm(self.path)
            except FileNotFoundError:
                pass


@contextmanager
def stage_lock(store: StageStore, stage: str, digest: str, timeout_s: float | None = None,
               on_wait: Callable[[dict[str, Any]], None] | None = None, stale_after_s: float = 120.0) -> Iterator[None]:
    """Hold the (stage, digest) lock for the block; ``on_wait`` is told once when another run holds it."""
    lock = StageLock(store, stage, digest, stale_after_s=stale_after_s)
    lock.acquire(timeout_s, on_wait)
    try:
        yield
    finally:
        lock.release()

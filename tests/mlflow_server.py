"""A real ``mlflow server`` on 127.0.0.1 for the tests that need one outside the full stack (``e2e_stack``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from infra.offline import offline_env
from infra.stack import free_port


@contextmanager
def mlflow_server(root: Path, backend_uri: str | None = None, artifacts: str | None = None,
                  env: Mapping[str, str] | None = None, timeout: float = 180) -> Iterator[str]:
    """Serve ``backend_uri`` (default: SQLite in ``root``) with artifacts proxied to ``artifacts`` (default: a folder in
    ``root``); yields the server's URI once ``/health`` answers OK, and stops the server and its workers after."""
    port, log = free_port(), root / "mlflow-server.log"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server",
           "--backend-store-uri", backend_uri or f"sqlite:///{root}/mlflow.db",
           "--artifacts-destination", artifacts or str(root / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    full_env = {**os.environ, **offline_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=root,
                                start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                    if resp.read().decode().strip() == "OK":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
            proc.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

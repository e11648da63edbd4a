"""The local stack: Prefect server (SQLite) + a process worker on ``franca-local`` + MLflow server, on 127.0.0.1.

    franca stack up [--prefect-port 4200] [--mlflow-port 5000]   # idempotent: running services are left alone
    franca stack status [--json]
    eval "$(franca stack env)"                                    # point the Prefect and MLflow clients at it
    franca stack down

Everything lives in ``state_dir()/stack/``: one pid file (pid + process start time, so a recycled pid is never
mistaken for ours) and one log per service, the SQLite databases, MLflow's artifacts and Prefect's result storage.
Every process gets ``offline_env()``. Ports come from flags, ``FRANCA_PREFECT_PORT`` / ``FRANCA_MLFLOW_PORT`` or the
defaults, and are remembered in ``stack.json`` so that ``env``/``status``/``down`` need no flags.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from infra.offline import offline_env, state_dir

HOST = "127.0.0.1"
POOL = "franca-local"
DEFAULT_PREFECT_PORT = 4200
DEFAULT_MLFLOW_PORT = 5000
SERVICES = ("prefect-server", "mlflow-server", "prefect-worker")  # start order; stopped in reverse


class StackError(RuntimeError):
    """The stack cannot be started or reached; the message says why and what to do."""


@dataclass(frozen=True)
class StackSettings:
    """Where the stack keeps its state and which ports it listens on."""

    state: Path
    prefect_port: int = DEFAULT_PREFECT_PORT
    mlflow_port: int = DEFAULT_MLFLOW_PORT
    pool: str = POOL

    @classmethod
    def resolve(cls, prefect_port: int | None = None, mlflow_port: int | None = None) -> StackSettings:
        """Flags, else the ports of the running stack (``stack.json``), else ``FRANCA_*_PORT``, else defaults."""
        state = state_dir() / "stack"
        saved: dict[str, Any] = {}
        if (state / "stack.json").is_file():
            saved = json.loads((state / "stack.json").read_text())
        env = os.environ
        return cls(
            state=state,
            prefect_port=int(prefect_port or saved.get("prefect_port") or env.get("FRANCA_PREFECT_PORT")
                             or DEFAULT_PREFECT_PORT),
            mlflow_port=int(mlflow_port or saved.get("mlflow_port") or env.get("FRANCA_MLFLOW_PORT")
                            or DEFAULT_MLFLOW_PORT),
        )

    @property
    def prefect_api_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}/api"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    def client_env(self) -> dict[str, str]:
        """What a client (CLI, worker, flow run) needs to talk to this stack, offline."""
        return {
            **offline_env(),
            "PREFECT_API_URL": self.prefect_api_url,
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "FRANCA_STATE_DIR": str(self.state.parent),
            # Persisted task results = the cache that lets a re-run or retried run skip finished stages; shared by
            # deployment runs (worker) and `franca run` (client).
            "PREFECT_LOCAL_STORAGE_PATH": str(self.result_storage),
        }

    @property
    def result_storage(self) -> Path:
        return self.state / "prefect" / "storage"


@contextmanager
def prefect_client(api_url: str | None = None) -> Iterator[Any]:
    """A sync Prefect client, on ``api_url`` when given. Prefect reads ``PREFECT_API_URL`` once, when it is imported,
    so a process that points at a stack after importing prefect has to say where, or it talks to an ephemeral
    server of its own."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    where = temporary_settings(updates={PREFECT_API_URL: api_url}) if api_url else nullcontext()
    with where, get_client(sync_client=True) as client:
        yield client


# --------------------------------------------------------------------------------------------- processes
def _command(name: str, s: StackSettings) -> list[str]:
    bindir = Path(sys.executable).parent
    if name == "prefect-server":
        return [str(bindir / "prefect"), "server", "start", "--host", HOST, "--port", str(s.prefect_port)]
    if name == "mlflow-server":
        db, artifacts = s.state / "mlflow" / "mlflow.db", s.state / "mlflow" / "artifacts"
        return [str(bindir / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{db}",
                "--artifacts-destination", str(artifacts), "--host", HOST, "--port", str(s.mlflow_port),
                "--workers", "1"]
    return [str(bindir / "prefect"), "worker", "start", "--pool", s.pool, "--type", "process",
            "--name", f"{s.pool}-worker", "--install-policy", "never"]


def _service_env(name: str, s: StackSettings) -> dict[str, str]:
    env = {**os.environ, **s.client_env()}
    env["PREFECT_HOME"] = str(s.state / "prefect")  # Prefect's SQLite database and settings
    if name == "mlflow-server":
        # The job-execution subsystem costs ~1.5 GB and ~12 s of start-up and is not used (STACK.md).
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    if name == "prefect-server":
        env.pop("PREFECT_API_URL", None)  # the server must not try to talk to itself as a client
    return env


def _pid_file(s: StackSettings, name: str) -> Path:
    return s.state / f"{name}.pid"


def _running(s: StackSettings, name: str) -> psutil.Process | None:
    """Our process for ``name`` if it is alive (pid and start time both match the pid file)."""
    path = _pid_file(s, name)
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
        proc = psutil.Process(rec["pid"])
        if abs(proc.create_time() - rec["started"]) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except (psutil.Error, ValueError, KeyError):
        pass
    return None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port that is free on 127.0.0.1 right now (for tests and ``--prefect-port 0``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _http_ok(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            text = resp.read().decode()
            return json.loads(text) if text.strip().startswith(("[", "{", "true")) else text
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _ready(name: str, s: StackSettings) -> bool:
    if name == "prefect-server":
        return _http_ok(f"{s.prefect_api_url}/health") is True
    if name == "mlflow-server":
        return _http_ok(f"{s.mlflow_uri}/health") == "OK"
    workers = _http_ok(f"{s.prefect_api_url}/work_pools/{s.pool}/workers/filter", "POST", {})
    return bool(workers) and any(w.get("status") == "ONLINE" for w in workers)


def _wait(name: str, s: StackSettings, proc: psutil.Process, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ready(name, s):
            return
        if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.is_file() else ""
            raise StackError(f"{name} exited during start-up; last lines of {log}:\n{tail}")
        time.sleep(0.5)
    raise StackError(f"{name} was not ready after {timeout:.0f} s; see {log}")


def _check_port(name: str, s: StackSettings) -> None:
    port = {"prefect-server": s.prefect_port, "mlflow-server": s.mlflow_port}.get(name)
    if port is not None and not _port_free(port):
        flag = "--prefect-port" if name == "prefect-server" else "--mlflow-port"
        raise StackError(f"port {port} on {HOST} is already taken by another program, so {name} cannot start; "
                         f"stop that program or choose another port with `franca stack up {flag} PORT`")


def _launch(name: str, s: StackSettings) -> psutil.Process:
    with (s.state / f"{name}.log").open("ab") as out:
        # A new session so that `down` can stop the service with everything it spawned (flow runs, Ray).
        popen = subprocess.Popen(_command(name, s), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=_service_env(name, s), cwd=s.state, start_new_session=True)
    proc = psutil.Process(popen.pid)
    _pid_file(s, name).write_text(json.dumps({"pid": popen.pid, "started": proc.create_time()}))
    return proc


def _stop(s: StackSettings, name: str, grace: float = 15.0) -> bool:
    """Stop our process group for ``name``; True when something was running."""
    proc = _running(s, name)
    _pid_file(s, name).unlink(missing_ok=True)
    if proc is None:
        return False
    # The worker ignores the first SIGTERM (it waits for its flow runs), so a second one follows (STACK.md).
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except psutil.TimeoutExpired:
            continue
    _reap_group(proc.pid)
    return True


def _reap_group(pgid: int) -> None:
    """Kill what is left of a service's process group (e.g. a flow run's Ray workers)."""
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid:
                p.kill()
        except (ProcessLookupError, psutil.Error, PermissionError):
            continue


# ---------------------------------------------------------------------------------------------- commands
def up(s: StackSettings, timeout: float = 120.0, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Start whatever is not running; a running stack on other ports is an error, not a second stack."""
    s.state.mkdir(parents=True, exist_ok=True)
    (s.state / "mlflow").mkdir(exist_ok=True)
    saved_path = s.state / "stack.json"
    if any(_running(s, n) for n in SERVICES) and saved_path.is_file():
        saved = json.loads(saved_path.read_text())
        if (saved["prefect_port"], saved["mlflow_port"]) != (s.prefect_port, s.mlflow_port):
            raise StackError(f"the stack in {s.state} already runs on ports {saved['prefect_port']} (Prefect) and "
                             f"{saved['mlflow_port']} (MLflow); run `franca stack down` first to change them")
    # The two servers start in parallel (each takes 10-70 s on a busy 2-core box); the worker needs Prefect's API.
    for group in (("prefect-server", "mlflow-server"), ("prefect-worker",)):
        t0, started = time.monotonic(), {}
        missing = [n for n in group if not _running(s, n)]
        for name in group:
            if name not in missing:
                log(f"{name}: already running")
        for name in missing:  # all ports are checked before anything starts
            _check_port(name, s)
        for name in missing:
            started[name] = _launch(name, s)
        try:
            for name, proc in started.items():
                _wait(name, s, proc, timeout, s.state / f"{name}.log")
                log(f"{name}: started (pid {proc.pid}) in {time.monotonic() - t0:.1f} s")
        except StackError:
            for name in started:
                _stop(s, name)
            raise
    saved_path.write_text(json.dumps({k: v for k, v in asdict(s).items() if k != "state"}))
    return status(s)


def down(s: StackSettings, log: Callable[[str], None] = print) -> None:
    """Stop every service of the stack (the worker first, so no new flow run starts)."""
    for name in reversed(SERVICES):
        log(f"{name}: {'stopped' if _stop(s, name) else 'not running'}")


def status(s: StackSettings) -> dict[str, Any]:
    """Each service's pid and health, the URLs and the state folder."""
    services = {}
    for name in SERVICES:
        proc = _running(s, name)
        services[name] = {"pid": proc.pid if proc else None, "running": proc is not None,
                          "healthy": bool(proc) and _ready(name, s), "log": str(s.state / f"{name}.log")}
    return {"prefect_ui": f"http://{HOST}:{s.prefect_port}", "prefect_api": s.prefect_api_url,
            "mlflow_ui": s.mlflow_uri, "work_pool": s.pool, "state": str(s.state), "services": services}


def env_lines(s: StackSettings) -> list[str]:
    """``export`` lines for a POSIX shell: ``eval "$(franca stack env)"``."""
    import shlex

    return [f"export {k}={shlex.quote(v)}" for k, v in s.client_env().items()]


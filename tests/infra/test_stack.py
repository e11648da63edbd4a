"""``franca stack``: real Prefect and MLflow servers and a worker on 127.0.0.1, in a temporary state folder."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from infra import stack

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.StackSettings]:
    s = stack.StackSettings(state=tmp_path_factory.mktemp("state") / "stack", prefect_port=stack.free_port(),
                            mlflow_port=stack.free_port())
    yield s
    stack.down(s, log=lambda _: None)  # always torn down, whatever the tests did


def test_up__starts_all_three_services_then_is_idempotent(settings: stack.StackSettings) -> None:
    info = stack.up(settings, timeout=240, log=lambda _: None)
    assert all(svc["healthy"] for svc in info["services"].values()), info
    pids = {name: svc["pid"] for name, svc in info["services"].items()}
    lines: list[str] = []
    again = stack.up(settings, timeout=240, log=lines.append)
    assert {name: svc["pid"] for name, svc in again["services"].items()} == pids
    assert all("already running" in line for line in lines) and len(lines) == 3
    for name in stack.SERVICES:
        assert (settings.state / f"{name}.pid").is_file() and (settings.state / f"{name}.log").is_file()


def test_env__points_clients_at_the_stack_and_stays_offline(settings: stack.StackSettings) -> None:
    env = "\n".join(stack.env_lines(settings))
    assert f"export PREFECT_API_URL=http://127.0.0.1:{settings.prefect_port}/api" in env
    assert f"export MLFLOW_TRACKING_URI=http://127.0.0.1:{settings.mlflow_port}" in env
    assert "export PREFECT_SERVER_ANALYTICS_ENABLED=false" in env and "MLFLOW_DISABLE_TELEMETRY=true" in env


def test_up__other_ports_while_running_is_refused(settings: stack.StackSettings) -> None:
    other = stack.StackSettings(state=settings.state, prefect_port=stack.free_port(), mlflow_port=settings.mlflow_port)
    with pytest.raises(stack.StackError, match="already runs on ports"):
        stack.up(other, log=lambda _: None)


def test_down__stops_every_process_and_frees_the_ports(settings: stack.StackSettings) -> None:
    pids = [svc["pid"] for svc in stack.status(settings)["services"].values()]
    stack.down(settings, log=lambda _: None)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    assert not any(svc["running"] for svc in stack.status(settings)["services"].values())
    assert stack._port_free(settings.prefect_port) and stack._port_free(settings.mlflow_port)


def test_up__port_taken_is_a_clear_error_and_starts_nothing(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        s = stack.StackSettings(state=tmp_path / "stack", prefect_port=stack.free_port(), mlflow_port=taken)
        with pytest.raises(stack.StackError, match=f"port {taken} .* already taken .*--mlflow-port"):
            stack.up(s, log=lambda _: None)
    assert not any(svc["running"] for svc in stack.status(s)["services"].values())

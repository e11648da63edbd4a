"""The one place that keeps every library of the stack off the network (../shared/STACK.md, "Network").

Ray, Prefect, MLflow and albumentations phone home by default, and Ray and torch.distributed listen on every
interface. ``offline_env()`` returns the variables that stop both; ``apply_offline_env()`` sets them in this process
(children, such as a local Ray's gcs_server, raylet and workers, inherit them). Entry points call it before anything
imports ``ray``: Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, at import, and otherwise resolves the node
address 127.0.0.1 to the host's routable one and binds its servers to all interfaces. The CLI does it at start-up,
the test configuration before any import, ``franca stack`` in every service's environment. ``LOOPBACK_ENV`` is for
one machine only: a cluster's nodes keep their own settings (``infra/README.md``, "Listeners").

``CHROMIUM_FLAGS`` and ``chromium_command`` do the same for the headless Chromium that checks the MLflow UI.

``bind_rendezvous_to_master_addr`` (a Ray worker setup hook calls it) makes torch.distributed's TCPStore listen on
``MASTER_ADDR`` only; torch binds it to every interface and has no setting for that.
"""

from __future__ import annotations

import contextlib
import importlib
import ipaddress
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

# No telemetry, update checks or cloud probes: safe everywhere, also sent to a cluster's workers.
OFFLINE_ENV: dict[str, str] = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "HF_HUB_OFFLINE": "1",
    "WANDB_MODE": "disabled",
}

# Listeners on 127.0.0.1 (one machine): Ray's node address (gcs_server, raylet, agents, workers), gloo's pair sockets,
# the Prefect server. Never sent to a cluster: its nodes talk over their own addresses.
LOOPBACK_ENV: dict[str, str] = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's node address stays 127.0.0.1 (read when `ray` is imported)
    "GLOO_SOCKET_IFNAME": "lo",  # gloo binds the loopback interface, not the address the hostname resolves to
    "PREFECT_SERVER_API_HOST": "127.0.0.1",
}

# Ray's dashboard probes cloud metadata endpoints unless $HOME of the Ray processes holds this file.
RAY_BOOTSTRAP = "provider: {type: local}\n"

# Headless Chromium (infra/browser.py, the MLflow UI check): its background services off (sign-in, sync, component
# and extension updates, network time, autofill, safe browsing, metrics, crash reports). Those flags leave some
# requests (accounts, checkin, time), so every request to another host also goes to a proxy that refuses (a refused
# loopback port; Chromium never proxies loopback) and no host name resolves but the loopback ones: no DNS query leaves.
CHROMIUM_FLAGS: tuple[str, ...] = (
    "--headless=new", "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-domain-reliability",
    "--disable-extensions", "--disable-breakpad", "--disable-client-side-phishing-detection", "--no-pings",
    "--metrics-recording-only", "--disable-features=NetworkTimeServiceQuerying,AutofillServerCommunication,"
    "OptimizationHints,MediaRouter,Translate", "--proxy-server=http://127.0.0.3:9",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
)
# Debian's binary itself: its launcher /usr/bin/chromium adds Debian's Google API keys and remote extensions.
CHROMIUM_BINARIES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")


def state_dir() -> Path:
    """The project's local state folder (pid files, logs, Ray's HOME); ``FRANCA_STATE_DIR`` overrides it."""
    return Path(os.environ.get("FRANCA_STATE_DIR", Path.cwd() / ".franca")).resolve()


def ray_home() -> Path:
    """A HOME for Ray processes holding ``ray_bootstrap_config.yaml`` with a local provider."""
    home = state_dir() / "ray-home"
    home.mkdir(parents=True, exist_ok=True)
    bootstrap = home / "ray_bootstrap_config.yaml"
    if not bootstrap.exists():
        bootstrap.write_text(RAY_BOOTSTRAP)
    return home


def offline_env(loopback: bool = True) -> dict[str, str]:
    """The variables that keep Ray, Prefect, MLflow and friends quiet and (``loopback``) listening on 127.0.0.1."""
    return {**OFFLINE_ENV, **(LOOPBACK_ENV if loopback else {})}


def apply_offline_env() -> None:
    """Set the offline and loopback variables in this process unless the user set them explicitly."""
    for key, value in offline_env().items():
        os.environ.setdefault(key, value)


def chromium_command(user_data_dir: Path, *args: str) -> list[str]:
    """Headless Chromium with ``CHROMIUM_FLAGS`` and a throwaway profile; ``--no-sandbox`` only as root, where its
    sandbox refuses to start. Raises ``FileNotFoundError`` naming ``make chromium`` when none is installed."""
    binary = next((found for name in CHROMIUM_BINARIES if (found := shutil.which(name))), None)
    if binary is None:
        raise FileNotFoundError(f"no Chromium ({', '.join(CHROMIUM_BINARIES)}); `make chromium` installs Debian's")
    sandbox = ("--no-sandbox",) if os.geteuid() == 0 else ()
    return [binary, *CHROMIUM_FLAGS, *sandbox, f"--user-data-dir={user_data_dir}", *args]


def ray_imported_too_early() -> bool:
    """True when ``ray`` was imported before ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` was set (so a local Ray would
    bind every interface), and the user did not ask for cluster mode themselves."""
    constants = sys.modules.get("ray._private.ray_constants")
    wanted = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", LOOPBACK_ENV["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"])
    return constants is not None and wanted == "0" and bool(getattr(constants, "ENABLE_RAY_CLUSTER", False))


def bind_rendezvous_to_master_addr() -> None:
    """Make rank 0's TCPStore (torch.distributed's rendezvous) listen on ``MASTER_ADDR`` only, in this process.

    torch binds the store to every interface (``::``); the other ranks connect to ``MASTER_ADDR`` (Ray Train sets it
    to rank 0's node address: 127.0.0.1 on one machine, the node's address on a cluster), so listening there alone
    loses nothing. Done by handing torch a socket already bound there (``master_listen_fd``, torch's own option),
    through the one function its ``env://`` and ``tcp://`` rendezvous create the store with.
    """
    from torch.distributed import TCPStore

    # The module (``torch.distributed.rendezvous`` as an attribute is a function of the same name).
    rendezvous: Any = importlib.import_module("torch.distributed.rendezvous")
    create = rendezvous._create_c10d_store
    if getattr(create, "franca_bound", False):
        return

    def bound(hostname: str, port: int, rank: int, world_size: int, timeout: Any, use_libuv: bool = True) -> Any:
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(hostname).version == 6 else socket.AF_INET
        except ValueError:  # a host name, not an address: leave it to torch
            return create(hostname, port, rank, world_size, timeout, use_libuv)
        if rank != 0 or rendezvous._agent_store_serves(hostname, port):
            return create(hostname, port, rank, world_size, timeout, use_libuv)
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((hostname, port))
            sock.listen(max(128, 2 * world_size))
            fd = sock.detach()  # from here on the store owns the socket
        try:
            return TCPStore(hostname, port, world_size, True, timeout, multi_tenant=True, master_listen_fd=fd,
                            use_libuv=use_libuv)
        except BaseException:
            with contextlib.suppress(OSError):  # torch may have closed it already
                os.close(fd)
            raise

    bound.franca_bound = True  # type: ignore[attr-defined]
    rendezvous._create_c10d_store = bound

"""The one way the pipeline attaches to Ray: the cluster at ``RAY_ADDRESS``, else a local Ray bound to 127.0.0.1.

Used by the pretrain stage (Ray Train) and the download stage's Ray distributor. Credentials never go into
``runtime_env`` (Ray keeps it in the GCS and shows it on the dashboard): a local Ray's workers inherit this process's
environment (``AWS_*`` included); a cluster's nodes have their own (or an IAM role) and get only the offline
settings, not the loopback ones, which would cut their nodes apart. Ray is imported inside, after the offline and
loopback settings are applied.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from infra.offline import (
    apply_offline_env,
    bind_rendezvous_to_master_addr,
    offline_env,
    ray_home,
    ray_imported_too_early,
)


def ray_worker_setup() -> None:
    """Ray worker setup hook: torch.distributed's store listens on ``MASTER_ADDR`` only (``infra.offline``); and,
    without the dashboard, Ray Train's placement-group cleaner cannot reach the state API and warns about it every
    second: that warning (and only it) is muted."""
    bind_rendezvous_to_master_addr()
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


_session_lock = threading.Lock()
_session_users = 0  # threads inside ray_session (concurrent subflows share one Ray: the last one out shuts it down)
_session_owned = False  # whether ray_session started the running Ray (one it found is never shut down here)


@contextmanager
def ray_session(num_cpus: int = 0) -> Iterator[None]:
    """Use a running Ray (``ray.is_initialized()`` or ``RAY_ADDRESS``), else start a local one on 127.0.0.1.

    Thread-safe: stages running at once in threads of one process (the ablation flow's concurrent variants) share
    the Ray that the first of them started, and it is shut down when the last one leaves.

    Args:
        num_cpus: CPUs a local Ray must offer at least (it offers ``os.cpu_count()`` when that is more).
    """
    global _session_users
    apply_offline_env()
    with _session_lock:
        _enter(num_cpus)
        _session_users += 1
    try:
        yield
    finally:
        with _session_lock:
            _session_users -= 1
            if _session_users == 0:
                _leave()


def _enter(num_cpus: int) -> None:
    """Start or attach to Ray unless it is running (called under the session lock)."""
    global _session_owned, _previous
    import ray

    if ray.is_initialized():
        return
    cluster = os.environ.get("RAY_ADDRESS")
    if not cluster and ray_imported_too_early():
        raise RuntimeError(
            "`ray` was imported before infra.offline.apply_offline_env() ran, so a local Ray would resolve its node "
            "address to a routable one and listen on every interface. Apply it before anything imports ray (the "
            "franca CLI and `franca stack`'s worker do; in your own script call it first or export "
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), or set RAY_ADDRESS to use a cluster")
    runtime_env = {"env_vars": offline_env(loopback=False), "worker_process_setup_hook": f"{__name__}.ray_worker_setup"}
    _previous = (signal.getsignal(signal.SIGINT), os.environ.get("HOME"))
    os.environ["HOME"] = str(ray_home())  # Ray's processes read ray_bootstrap_config.yaml from $HOME (STACK.md)
    try:
        if cluster:
            ray.init(address=cluster, runtime_env=runtime_env, log_to_driver=True)
        else:  # "local": never attach to another `ray start` cluster found in /tmp/ray
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, num_cpus), include_dashboard=False,
                     _node_ip_address="127.0.0.1", runtime_env=runtime_env)
    except BaseException:
        _restore()
        raise
    _session_owned = True


def _leave() -> None:
    """Shut down the Ray this module started (called under the session lock, by the last user)."""
    global _session_owned
    if not _session_owned:
        return
    import ray

    _session_owned = False
    try:
        ray.shutdown()
    finally:
        _restore()


_previous: tuple[Any, str | None] = (None, None)


def _restore() -> None:
    previous_sigint, previous_home = _previous
    if previous_home is not None:
        os.environ["HOME"] = previous_home
    if previous_sigint is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, previous_sigint)  # Ray leaves its own handler behind

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
from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def ray_session(num_cpus: int = 0) -> Iterator[None]:
    """Use a running Ray (``ray.is_initialized()`` or ``RAY_ADDRESS``), else start a local one on 127.0.0.1.

    Args:
        num_cpus: CPUs a local Ray must offer at least (it offers ``os.cpu_count()`` when that is more).
    """
    apply_offline_env()
    import ray

    if ray.is_initialized():
        yield
        return
    cluster = os.environ.get("RAY_ADDRESS")
    if not cluster and ray_imported_too_early():
        raise RuntimeError(
            "`ray` was imported before infra.offline.apply_offline_env() ran, so a local Ray would resolve its node "
            "address to a routable one and listen on every interface. Apply it before anything imports ray (the "
            "franca CLI and `franca stack`'s worker do; in your own script call it first or export "
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0), or set RAY_ADDRESS to use a cluster")
    runtime_env = {"env_vars": offline_env(loopback=False), "worker_process_setup_hook": f"{__name__}.ray_worker_setup"}
    previous_sigint, previous_home = signal.getsignal(signal.SIGINT), os.environ.get("HOME")
    os.environ["HOME"] = str(ray_home())  # Ray's processes read ray_bootstrap_config.yaml from $HOME (STACK.md)
    try:
        if cluster:
            ray.init(address=cluster, runtime_env=runtime_env, log_to_driver=True)
        else:  # "local": never attach to another `ray start` cluster found in /tmp/ray
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, num_cpus), include_dashboard=False,
                     _node_ip_address="127.0.0.1", runtime_env=runtime_env)
        yield
    finally:
        if previous_home is not None:
            os.environ["HOME"] = previous_home
        ray.shutdown()
        signal.signal(signal.SIGINT, previous_sigint)  # Ray leaves its own handler behind

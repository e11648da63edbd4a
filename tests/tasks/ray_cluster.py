"""A 2-node Ray cluster on 127.0.0.1 for the tests of stages that run on Ray (pretrain, download).

Loaded by path (``importlib.util.spec_from_file_location``), as pytest runs in importlib mode. A test module
registers the fixture by naming it: ``two_node_cluster = ray_cluster.two_node_cluster``. Clusters are torn down by
process id (only processes whose command line or open files name the cluster's own temp dirs), never `ray stop`,
which would also stop other Ray instances on the machine.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from franca_core.data.shards import write_manifest, write_shards
from franca_core.data.synthetic import iter_images
from infra.offline import offline_env, ray_home
from tasks.common.store import StageResult

RAY = str(Path(sys.executable).parent / "ray")

# `ray start --address` refuses to start a worker node while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and with =1 it
# rewrites 127.0.0.1 to the host's routable address (found by a UDP connect to a public address; strace). So the
# second node is started the way `ray start --address` does it after that check: ray._private.node.Node(head=False).
WORKER_NODE = """
import sys
from ray._private import node, parameter
from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled
ensure_token_if_auth_enabled(None, create_token_if_missing=False)
params = parameter.RayParams(gcs_address=sys.argv[1], node_ip_address="127.0.0.1", num_cpus=1, temp_dir=sys.argv[2])
node.Node(params, head=False, shutdown_at_exit=False, spawn_reaper=False, connect_only=False)
"""


def shard_dataset(root: Path, n: int, shard_size: int = 16) -> StageResult:
    """A dedup-style output for pretraining tests: ``n`` 32 px JPEGs in img2dataset-layout shards, every row kept."""
    records = []
    for i, (image, _, label) in enumerate(iter_images(n, seed=0, size=32)):
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        records.append((f"{i:09d}", buf.getvalue(), f"shape {label}"))
    manifest = write_manifest(write_shards(records, str(root), shard_size=shard_size), str(root / "manifest.parquet"))
    return StageResult(stage="dedup", uri=str(root), input_digest="0" * 64,
                       digest=hashlib.sha256(str(n).encode()).hexdigest(), files={"manifest": manifest})


def kill_tree_of(marker: str) -> None:
    """SIGKILL the processes of a Ray instance of this test: those whose command line or open files name ``marker``
    (its temp dir; Ray's agents and workers rename themselves but keep their logs open there), and their children."""
    def ours(p: psutil.Process) -> bool:
        try:
            return marker in " ".join(p.cmdline()) or any(marker in f.path for f in p.open_files())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return False

    victims = {p.pid: p for p in psutil.process_iter() if p.pid != os.getpid() and ours(p)}
    for p in list(victims.values()):
        try:
            victims.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    for p in victims.values():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(victims.values()), timeout=30)


def ray_env(**extra: str) -> dict[str, str]:
    """This process's environment with the offline settings and Ray's HOME (``infra.offline.ray_home``)."""
    return {**os.environ, **offline_env(), "HOME": str(ray_home()), **extra}


@pytest.fixture
def two_node_cluster() -> Iterator[str]:
    """`ray start --head` + a worker node on 127.0.0.1, one CPU each, separate temp dirs, token authentication.

    Yields the head's address (for ``RAY_ADDRESS``; a driver also needs ``RAY_AUTH_MODE=token``).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = [tempfile.mkdtemp(prefix="frh-"), tempfile.mkdtemp(prefix="frw-")]  # short: Ray's socket paths
    env = ray_env(RAY_AUTH_MODE="token")  # Ray 2.60 clusters use token auth; the token lives in the Ray HOME
    try:
        if not (ray_home() / ".ray" / "auth_token").is_file():
            subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
        subprocess.run([RAY, "start", "--head", "--port", str(port), "--include-dashboard=false", "--temp-dir",
                        temp[0], "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"],
                       env=env, check=True, capture_output=True, timeout=300)
        subprocess.run([sys.executable, "-c", WORKER_NODE, f"127.0.0.1:{port}", temp[1]], env=env, check=True,
                       capture_output=True, timeout=300)
        yield f"127.0.0.1:{port}"
    finally:
        for folder in reversed(temp):
            kill_tree_of(folder)

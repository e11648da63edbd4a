"""Every listener a pretraining run opens binds loopback, and S3 credentials reach Ray workers only through their env.

The pretraining run is a real one (2 Ray Train workers, DDP over gloo) in a driver process of its own, started the
way an entry point starts (``infra.offline.apply_offline_env()`` first, from an environment without the loopback
settings), while the test lists the listening sockets of the driver and everything it spawned (gcs_server, raylet,
agents, Ray Train workers with torch.distributed's TCPStore and gloo's pair sockets) every 0.1 s.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from franca_core.config import load_config
from infra.offline import LOOPBACK_ENV
from tasks.common.store import StageResult

REPO = Path(__file__).resolve().parents[2]
# Loaded by path: the test suite runs in importlib mode, where test folders are not on sys.path.
_spec = importlib.util.spec_from_file_location("ray_cluster", Path(__file__).with_name("ray_cluster.py"))
ray_cluster = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(ray_cluster)  # type: ignore[union-attr]
FAKE_SECRET = "franca/test+SECRET/never-in-runtime-env0"  # 40 characters, AWS-like
SMALL = ["train.optim.batch_size=4", "train.optim.total_steps=2", "train.optim.warmup_steps=1",
         "train.checkpoint_every=2", "train.log_every=1", "train.loader_workers=1", "train.num_workers=2",
         "train.crops.n_local=1", "train.crops.global_size=32", "train.crops.local_size=16", "train.model.img_size=32",
         "train.max_failures=0", "train.cpus_per_worker=1"]
# The CLI's order: loopback settings first, then anything that imports ray.
DRIVER = ("from infra.offline import apply_offline_env; apply_offline_env(); "
          "import json, sys; from franca_core.config import build_config; from tasks.common.store import StageResult; "
          "from tasks.common.runner import run_stage; cfg = build_config(json.load(open(sys.argv[1]))); "
          "r = run_stage('pretrain', cfg, dataset=StageResult.model_validate_json(open(sys.argv[2]).read())); "
          "print('RESULT', r.model_dump_json())")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> StageResult:
    """A dedup-style output: 2 shards of 16 JPEGs and a manifest keeping every row."""
    return ray_cluster.shard_dataset(tmp_path_factory.mktemp("dedup"), 32)


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is 127.0.0.1 on a dual-stack socket
    return (mapped or addr).is_loopback


def _listeners(pids: set[int]) -> set[tuple[int, str, int]]:
    return {(c.pid, c.laddr.ip, c.laddr.port) for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


def _family(root: psutil.Process) -> dict[int, str]:
    """pid -> process name of ``root`` and its descendants (Ray renames its workers: ``ray::RayTrainWorker...``)."""
    out = {}
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            cmd = p.cmdline()  # argv[0] by its base name: the install path's length must not push the name out
            out[p.pid] = " ".join([os.path.basename(cmd[0]), *cmd[1:]])[:80] if cmd else p.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return out


@pytest.mark.slow
@pytest.mark.integration
def test_pretraining__every_listener_binds_loopback(dataset: StageResult, tmp_path: Path) -> None:
    cfg = load_config("tiny", [f"storage.root={tmp_path / 'store'}", *SMALL])
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    (tmp_path / "dataset.json").write_text(dataset.model_dump_json())
    ray_tmp = tempfile.mkdtemp(prefix="frl-")  # short: Ray's socket paths
    env = {k: v for k, v in os.environ.items() if k not in LOOPBACK_ENV}  # as a fresh shell: the driver sets them
    env.update(RAY_TMPDIR=ray_tmp, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.25", AWS_SECRET_ACCESS_KEY=FAKE_SECRET)
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path / "cfg.json"), str(tmp_path / "dataset.json")],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen: dict[tuple[int, str, int], str] = {}
    try:
        root = psutil.Process(proc.pid)
        deadline = time.monotonic() + 900
        while proc.poll() is None and time.monotonic() < deadline:
            family = _family(root)
            seen.update({sock: family.get(sock[0], "?") for sock in _listeners(set(family))})
            time.sleep(0.1)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        ray_cluster.kill_tree_of(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, out[-4000:]
    assert json.loads(out.rsplit("RESULT ", 1)[1].splitlines()[0])["stats"]["steps"] == 2
    names = " ".join(seen.values())
    assert "gcs_server" in names and "raylet" in names and "RayTrainWorker" in names, seen  # not vacuous
    outside = {f"{ip}:{port}": name for (_, ip, port), name in seen.items() if not _is_loopback(ip)}
    assert not outside, f"listening beyond loopback: {outside}"


def test_ray_session__refuses_a_local_ray_imported_before_the_loopback_settings(tmp_path: Path) -> None:
    code = ("import ray; from infra.offline import apply_offline_env; apply_offline_env(); "
            "from tasks.common.ray_session import ray_session\n"
            "with ray_session(): pass")
    env = {k: v for k, v in os.environ.items() if k not in LOOPBACK_ENV and k != "RAY_ADDRESS"}
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "imported before infra.offline.apply_offline_env()" in run.stderr, run.stderr[-3000:]


@pytest.mark.integration
def test_ray_session__credentials_reach_workers_by_environment_not_runtime_env(monkeypatch: pytest.MonkeyPatch,
                                                                               tmp_path: Path) -> None:
    import ray

    from tasks.common.ray_session import ray_session

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    ray_tmp = tempfile.mkdtemp(prefix="frc-")
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    @ray.remote
    def worker_env() -> str | None:
        return os.environ.get("AWS_SECRET_ACCESS_KEY")

    try:
        with ray_session(1):
            runtime_env = json.dumps(ray.get_runtime_context().runtime_env)
            assert "AWS_" not in runtime_env and FAKE_SECRET not in runtime_env, runtime_env
            assert ray.get(worker_env.remote()) == FAKE_SECRET
    finally:
        ray_cluster.kill_tree_of(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)

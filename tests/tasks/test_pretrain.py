"""The pretrain stage on real Ray: DDP sync, a 2-node cluster, resume after a killed driver, FailureConfig restart.

Every test trains the tiny architecture at 32 px on a 48-image shard set for a few steps. Clusters the tests start
are torn down by process id (only processes whose command line names the test's own temp dir), never `ray stop`,
which would also stop other Ray instances on the machine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from franca_core.config import PipelineConfig, TrainConfig, load_config
from franca_core.data.shards import ShardIndex, build_loader
from franca_core.models.backbone import build_backbone
from franca_core.models.student_teacher import build_student_teacher
from tasks.common.runner import run_stage
from tasks.common.store import StageResult
from tasks.common.train_loop import weights_digest
from tasks.pretrain import pretrain as pretrain_stage

STAGE = "pretrain"


def pretrain(cfg: PipelineConfig, dataset: StageResult) -> StageResult:
    return run_stage(STAGE, cfg, dataset=dataset)

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]

_spec = importlib.util.spec_from_file_location("ray_cluster", Path(__file__).with_name("ray_cluster.py"))
ray_cluster = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(ray_cluster)  # type: ignore[union-attr]
two_node_cluster = ray_cluster.two_node_cluster  # the fixture, registered here by name
_kill_tree_of, _ray_env = ray_cluster.kill_tree_of, ray_cluster.ray_env
SMALL = ["train.optim.batch_size=4", "train.optim.total_steps=4", "train.optim.warmup_steps=1",
         "train.checkpoint_every=2", "train.log_every=2", "train.loader_workers=1", "train.num_workers=2",
         "train.crops.n_local=1", "train.crops.global_size=32", "train.crops.local_size=16", "train.model.img_size=32",
         "train.max_failures=0", "train.keep_checkpoints=10", "train.cpus_per_worker=1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> StageResult:
    """A dedup-style output: 3 img2dataset-layout shards of 16 JPEGs and a manifest with every row kept."""
    return ray_cluster.shard_dataset(tmp_path_factory.mktemp("dedup"), 48)


def _cfg(root: Path, *extra: str) -> PipelineConfig:
    return load_config("tiny", [f"storage.root={root}", *SMALL, *extra])


def _expected_data_digest(dataset: StageResult, cfg: TrainConfig, steps: int, rank: int = 0) -> str:
    """The running sample-id digest of an uninterrupted run, from the loader alone (no training)."""
    loader = iter(build_loader(ShardIndex.from_manifest(dataset.files["manifest"]), cfg, rank, cfg.num_workers))
    digest = ""
    for _ in range(steps):
        digest = hashlib.sha256(digest.encode() + next(loader)["ids"].numpy().tobytes()).hexdigest()
    return digest


# A driver process of its own: a restart after SIGKILL, and a fresh process for RAY_ADDRESS (Ray reads its
# authentication mode once per process, at import).
DRIVER = ("import json, sys; from franca_core.config import build_config; from tasks.common.store import StageResult; "
          "from tasks.common.runner import run_stage; cfg = build_config(json.load(open(sys.argv[1]))); "
          "r = run_stage('pretrain', cfg, dataset=StageResult.model_validate_json(open(sys.argv[2]).read())); "
          "print('RESULT', r.model_dump_json())")


def _driver_inputs(tmp_path: Path, cfg: PipelineConfig, dataset: StageResult) -> tuple[Path, Path]:
    config_file, dataset_file = tmp_path / "cfg.json", tmp_path / "dataset.json"
    config_file.write_text(cfg.model_dump_json())
    dataset_file.write_text(dataset.model_dump_json())
    return config_file, dataset_file


@pytest.fixture(autouse=True)
def fast_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Train's controller polls workers every 2 s and a worker's next report() waits for that poll; the tests
    report every step or two, so they poll faster (inherited by the Ray processes the tests start)."""
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


def test_pretrain__two_workers_stay_in_sync(dataset: StageResult, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "train.optim.total_steps=2")
    result = pretrain(cfg, dataset)
    stats = result.stats
    assert stats["steps"] == 2 and math.isfinite(stats["loss"]["loss"]), stats
    torch.manual_seed(cfg.train.seed)
    initial = weights_digest(build_student_teacher(cfg.train)[0])
    assert len(set(stats["rank_weight_digests"])) == 1, "DDP ranks diverged"
    assert stats["rank_weight_digests"][0] != initial, "no optimiser step changed the weights"
    assert len(set(stats["rank_data_digests"])) == 2, "both ranks read the same samples"
    backbone = build_backbone(cfg.train.model)
    backbone.load_state_dict(load_file(result.files["backbone"]))
    assert Path(result.files["checkpoint"], "state.pt").is_file()
    assert pretrain(cfg, dataset).cached


def test_pretrain__two_node_cluster(dataset: StageResult, tmp_path: Path, two_node_cluster: str) -> None:
    inputs = _driver_inputs(tmp_path, _cfg(tmp_path / "store", "train.optim.total_steps=2"), dataset)
    run = subprocess.run([sys.executable, "-c", DRIVER, *map(str, inputs)], cwd=REPO, capture_output=True, text=True,
                         env=_ray_env(RAY_ADDRESS=two_node_cluster, RAY_AUTH_MODE="token"), timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = StageResult.model_validate_json(run.stdout.rsplit("RESULT ", 1)[1].splitlines()[0])
    assert result.stats["steps"] == 2
    assert len(set(result.stats["rank_nodes"])) == 2, "the two workers did not run on two nodes"
    assert len(set(result.stats["rank_weight_digests"])) == 1


def test_pretrain__resumes_after_driver_killed(dataset: StageResult, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "store", "train.optim.total_steps=8", "train.log_every=1", "train.num_workers=1")
    config_file, dataset_file = _driver_inputs(tmp_path, cfg, dataset)
    digest = pretrain_stage.key(cfg, {"dataset": dataset}).digest
    run = tmp_path / "store" / STAGE / digest / "ray" / f"{STAGE}-{digest[:16]}"
    ray_tmp = tempfile.mkdtemp(prefix="frk-")
    log = (tmp_path / "driver.log").open("w")
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(config_file), str(dataset_file)], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=_ray_env(RAY_TMPDIR=ray_tmp))
    try:
        snapshot = run / "checkpoint_manager_snapshot.json"
        deadline = time.monotonic() + 600
        while not (snapshot.is_file() and "checkpoint_" in snapshot.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything in its session, right after a checkpoint
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _kill_tree_of(ray_tmp)
    assert not (tmp_path / "store" / STAGE / digest / "result.json").exists(), "the run finished before the kill"
    steps_on_disk = [torch.load(p, weights_only=True)["step"] for p in run.glob("checkpoint_*/state.pt")]
    assert steps_on_disk and max(steps_on_disk) < 8, steps_on_disk

    result = pretrain(cfg, dataset)  # same config: same run name, so Ray hands back the latest checkpoint
    stats = result.stats
    assert stats["resumed_from"] in steps_on_disk and stats["resumed_from"] >= 2, (stats, steps_on_disk)
    assert stats["steps"] == 8
    assert stats["data_digest"] == _expected_data_digest(dataset, cfg.train, 8), "resume changed the data order"


def test_pretrain__worker_failure_restarts_from_checkpoint(dataset: StageResult, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "train.fail_once_at_step=3", "train.max_failures=1")
    result = pretrain(cfg, dataset)
    stats = result.stats
    assert stats["steps"] == 4 and stats["resumed_from"] == 2, stats
    assert Path(result.uri, ".failed_once_at_step_3").is_file(), "the injected failure did not happen"
    assert len(set(stats["rank_weight_digests"])) == 1
    assert stats["data_digest"] == _expected_data_digest(dataset, cfg.train, 4), "the restart changed the data order"
    assert json.loads(Path(result.files["train_config"]).read_text())["fail_once_at_step"] == 3

"""A 1-GPU Ray TorchTrainer pretraining of a few steps through the pretrain stage (issue 19; marked ``gpu``).

A local Ray (``ray_session``: 127.0.0.1, GPUs detected) runs one Ray Train worker with ``train.use_gpu``: NCCL
process group, the model on the worker's CUDA device, bf16 where native. The run must train (finite losses, weights
moved), checkpoint, and its checkpoint must carry the CUDA RNG (it trained on the GPU, not on a CPU fallback).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from franca_core.checkpoint import load_checkpoint
from franca_core.config import load_config
from franca_core.models.student_teacher import build_student_teacher
from tasks.common.runner import run_stage
from tasks.common.train_loop import weights_digest

_spec = importlib.util.spec_from_file_location("ray_cluster", Path(__file__).parents[1] / "tasks" / "ray_cluster.py")
ray_cluster = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(ray_cluster)  # type: ignore[union-attr]

pytestmark = [pytest.mark.gpu, pytest.mark.slow, pytest.mark.integration]

STEPS = 4
SMALL = ["train.optim.batch_size=8", f"train.optim.total_steps={STEPS}", "train.optim.warmup_steps=1",
         "train.checkpoint_every=2", "train.log_every=1", "train.loader_workers=1", "train.num_workers=1",
         "train.use_gpu=true", "train.crops.n_local=2", "train.max_failures=0", "train.cpus_per_worker=1"]


def test_pretrain__one_gpu_ray_torchtrainer_trains_and_checkpoints(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    dataset = ray_cluster.shard_dataset(tmp_path / "dedup", 48)
    cfg = load_config("tiny", [f"storage.root={tmp_path / 'store'}", *SMALL])
    result = run_stage("pretrain", cfg, dataset=dataset)
    stats = result.stats
    assert stats["steps"] == STEPS and math.isfinite(stats["loss"]["loss"]), stats
    torch.manual_seed(cfg.train.seed)
    assert stats["rank_weight_digests"][0] != weights_digest(build_student_teacher(cfg.train)[0])
    state = load_checkpoint(Path(result.files["checkpoint"], "state.pt"))
    assert int(state["step"]) == STEPS
    assert state["rng"].get("cuda"), "the worker's checkpoint has no CUDA RNG: it did not train on the GPU"

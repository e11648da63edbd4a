"""The pretrain stage's torch.distributed settings and its operational fields (issue 19, GPU correctness)."""

from __future__ import annotations

from franca_core.config import load_config
from tasks.common.contract import load_stage
from tasks.common.ray_train import torch_config
from tasks.common.store import StageResult

DATASET = StageResult(stage="dedup", uri="/x", input_digest="a" * 64, digest="b" * 64)


def test_torch_config__gloo_on_cpu_nccl_on_gpu_with_the_configured_timeout() -> None:
    cpu = torch_config(load_config("tiny").train)
    assert (cpu.backend, cpu.timeout_s) == ("gloo", 1800)
    gpu = torch_config(load_config("vitb14", ["train.dist_timeout_s=600"]).train)
    assert (gpu.backend, gpu.timeout_s) == ("nccl", 600)


def test_key__activation_checkpointing_and_timeout_do_not_change_it_precision_does() -> None:
    pretrain = load_stage("pretrain")
    key = pretrain.key(load_config("tiny"), {"dataset": DATASET}).digest
    same = load_config("tiny", ["train.grad_checkpointing=true", "train.dist_timeout_s=60"])
    assert pretrain.key(same, {"dataset": DATASET}).digest == key  # turning them on resumes the same run
    assert pretrain.key(load_config("tiny", ["train.precision=fp32"]), {"dataset": DATASET}).digest != key

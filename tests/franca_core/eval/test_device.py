"""``eval.device``: where RASA fitting and evaluation run their backbone passes, and in which precision."""

from __future__ import annotations

import pytest
import torch

from franca_core.config import load_config
from franca_core.eval.device import inference_autocast, inference_precision, module_device, resolve_device
from franca_core.models.backbone import build_backbone

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only answers; CUDA ones are in tests/gpu")


def test_resolve_device__cpu_always_and_unknown_choices_raise() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="eval.device must be one of"):
        resolve_device("tpu")


@no_cuda
def test_resolve_device__auto_is_the_cpu_and_cuda_raises_without_a_gpu() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="torch.cuda.is_available"):
        resolve_device("cuda")


def test_inference_precision__the_cpu_stays_float32() -> None:
    cpu = torch.device("cpu")
    assert inference_precision(cpu) == "fp32"
    backbone = build_backbone(load_config("tiny").train.model, drop_path=0.0).eval()
    assert module_device(backbone) == cpu
    with torch.no_grad(), inference_autocast(cpu):
        out = backbone.forward_masked(torch.randn(2, 3, 64, 64))
    assert out["cls"].dtype == torch.float32  # no autocast on a CPU: features as before


def test_eval_config__device_fields_default_to_in_process_auto() -> None:
    cfg = load_config("tiny").eval
    assert cfg.device == "auto" and cfg.num_gpus == 0
    with pytest.raises(ValueError):
        load_config("tiny", ["eval.device=tpu"])

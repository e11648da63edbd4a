"""RASA's backbone passes on CUDA (``eval.device``): the tokens equal the CPU's within tolerance and the stage's fit
reports the device, bf16 where native and its features/s (issue 19; marked ``gpu``).

The tolerance is that of the evaluation-features test (5 % of the spread between images), which admits bf16.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from franca_core.config import load_config
from franca_core.data.synthetic import iter_images
from franca_core.eval.data import EvalSet
from franca_core.eval.position_probe import augmented_tokens
from franca_core.models.backbone import build_backbone
from tasks.rasa import fit_rasa_on_device

pytestmark = pytest.mark.gpu


def _pngs(n: int) -> list[bytes]:
    out = []
    for image, _, _ in iter_images(n, seed=2, size=64):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def test_rasa_on_cuda__tokens_equal_cpu_and_stats_name_the_device() -> None:
    cfg = load_config("tiny", ["rasa.rounds=2", "rasa.views=2", "rasa.min_steps=20", "rasa.max_images=12"])
    images = EvalSet.from_records("fit", _pngs(12), cfg.train.model.patch_size)
    torch.manual_seed(0)
    backbone = build_backbone(cfg.train.model, drop_path=0.0)
    cpu = augmented_tokens(backbone, images, views=2, batch_size=4, seed=0).float()
    gpu = augmented_tokens(copy.deepcopy(backbone).cuda(), images, views=2, batch_size=4, seed=0)
    assert gpu.device.type == "cpu" and gpu.shape == cpu.shape  # tokens come back to the CPU
    spread = (cpu - cpu.mean(dim=0, keepdim=True)).norm()
    error = float((gpu.float() - cpu).norm() / spread)
    assert error <= 0.05, f"CUDA tokens differ from the CPU's by {error:.3f} of their spread"
    result, stats = fit_rasa_on_device(copy.deepcopy(backbone), images, cfg.rasa, 4, 0, "auto")
    assert stats["device"].startswith("cuda") and stats["features_per_s"] > 0
    assert stats["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert result.matrix.device.type == "cpu" and torch.isfinite(result.matrix).all()

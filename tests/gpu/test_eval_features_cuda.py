"""Evaluation features computed on CUDA equal those computed on the CPU (issue 19; marked ``gpu``).

A ViT-B/14 (the vitb14 profile's backbone, LayerScale 0.1 so images differ at random init) over generated images at
112 px through ``extract_eval_features``, the evaluation suite's feature path. The error is measured against the
spread between images (not against the features' size), so a device mix-up or a lost row cannot hide in features
that are alike (another random init: 1.4 to 1.7); the tolerance (5 %) admits bf16 autocast, which evaluation on a
GPU may use (0.3 % to 0.7 % on a CPU). ``extract_eval_features`` moves each batch to the backbone's device and the
features back to the CPU.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from franca_core.config import load_config
from franca_core.data.synthetic import iter_images
from franca_core.eval.data import EvalSet
from franca_core.eval.features import extract_eval_features
from franca_core.models.backbone import build_backbone

pytestmark = pytest.mark.gpu

TOLERANCE = 0.05


def _jpegs(n: int) -> list[bytes]:
    out = []
    for image, _, _ in iter_images(n, seed=0, size=128):
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=95)
        out.append(buf.getvalue())
    return out


def _relative_error(device_feats: torch.Tensor, cpu_feats: torch.Tensor) -> float:
    """||device - cpu|| over the images' spread ||cpu - mean over images||."""
    cpu_feats, device_feats = cpu_feats.float(), device_feats.float().cpu()
    spread = (cpu_feats - cpu_feats.mean(dim=0, keepdim=True)).norm()
    return float((device_feats - cpu_feats).norm() / spread)


def test_extract_eval_features__cuda_equals_cpu() -> None:
    model_cfg = load_config("vitb14", ["train.model.layerscale_init=0.1"]).train.model
    evalset = EvalSet.from_records("generated", _jpegs(12), model_cfg.patch_size, labels=[i % 3 for i in range(12)],
                                   resolution=112)
    torch.manual_seed(0)
    backbone = build_backbone(model_cfg, drop_path=0.0)
    on_cuda = copy.deepcopy(backbone).to("cuda")
    cpu = extract_eval_features(backbone, evalset, batch_size=4, keep_patches=True)
    gpu = extract_eval_features(on_cuda, evalset, batch_size=4, keep_patches=True)
    assert torch.equal(gpu["labels"].cpu(), cpu["labels"])
    for key in ("cls", "patch_mean", "patch"):
        assert gpu[key].shape == cpu[key].shape, key
        error = _relative_error(gpu[key], cpu[key])
        assert error <= TOLERANCE, f"{key}: CUDA features differ from the CPU's by {error:.3f} of their spread"

"""``franca bench gpu`` on CUDA, shortened (batch up to 8, one round): the vitb14 step runs in bf16 on the GPU and the
JSON has an MFU against a known peak and a peak memory (issue 19; marked ``gpu``). The full check is the bench."""

from __future__ import annotations

import json

import pytest
import torch

from franca_cli.main import main

pytestmark = pytest.mark.gpu


def test_bench_gpu__cuda_vitb14_short_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "gpu", "--max-batch", "8", "--rounds", "1", "--steps", "2", "--eval-images", "64"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["profile"] == "vitb14" and out["batch_size"] == 8 and out["crops"] == "2 x 224 + 8 x 98 px"
    assert out["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert out["images_per_s"] > 0 and out["backbone_images_per_s"] > 0 and out["features_per_s"] > 0
    assert out["peak_memory_gb"] > 0.5  # ViT-B/14 with its K = 131,072 heads, AdamW state included
    if out["peak_tflops"] is not None:  # a GPU of PEAK_BF16_TFLOPS
        assert 0 < out["mfu"] < 1

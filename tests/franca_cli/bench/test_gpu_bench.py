"""``franca bench gpu`` on a CPU: the tiny profile end to end, the JSON's keys and sane values (issue 19)."""

from __future__ import annotations

import json

import pytest
import torch

from franca_cli.bench.gpu import peak_tflops
from franca_cli.main import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path; on CUDA the full check runs (minutes)")
def test_bench_gpu__cpu_runs_the_tiny_profile_and_prints_the_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "gpu", "--rounds", "1", "--steps", "1", "--max-batch", "2", "--eval-images", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["device"] == "cpu" and out["profile"] == "tiny" and out["batch_size"] == 2
    for key in ("images_per_s", "backbone_images_per_s", "features_per_s", "features_backbone_per_s"):
        assert isinstance(out[key], float) and out[key] > 0, (key, out)
    assert 0 < out["efficiency"] < 2 and out["efficiency"] == pytest.approx(
        out["images_per_s"] / out["backbone_images_per_s"], rel=0.01)
    # FlopCounterMode saw the step's matmuls: at least the backbone's forward on the crops of 2 images
    assert out["flops_per_step"] > 2 * 2 * 1e6
    assert out["mfu"] is None and out["peak_memory_gb"] is None and "CPU" in out["peak_source"]


def test_peak_tflops__stated_peak_wins_and_a_cpu_has_none() -> None:
    assert peak_tflops(torch.device("cpu"), None)[0] is None
    assert peak_tflops(torch.device("cpu"), 2.5) == (2.5, "--peak-tflops")

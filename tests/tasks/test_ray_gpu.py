"""RASA fitting in a Ray task that holds a GPU (``eval.num_gpus``), on a one-node cluster on 127.0.0.1 (issue 19).

The node declares one GPU (``ray start --num-gpus 1``) that this machine need not have: Ray schedules the task on
it and sets ``CUDA_VISIBLE_DEVICES``; where torch sees no CUDA device, ``eval.device=auto`` runs on the CPU there,
so the fit must equal the one in this process. Real CUDA in the task is covered by the gpu-marked tests.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from franca_core.config import load_config
from franca_core.data.synthetic import iter_images
from franca_core.eval.data import EvalSet
from franca_core.models.backbone import build_backbone
from tasks.common.ray_gpu import run_with_gpus
from tasks.rasa import fit_rasa_on_device

_spec = importlib.util.spec_from_file_location("ray_cluster", Path(__file__).parent / "ray_cluster.py")
ray_cluster = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(ray_cluster)  # type: ignore[union-attr]

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def one_gpu_node(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`ray start --head` on 127.0.0.1 with one CPU and one declared GPU; RAY_ADDRESS points at it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="frg-")  # short: Ray's socket paths
    env = ray_cluster.ray_env(RAY_AUTH_MODE="token")
    try:
        if not (ray_cluster.ray_home() / ".ray" / "auth_token").is_file():
            subprocess.run([ray_cluster.RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
        subprocess.run([ray_cluster.RAY, "start", "--head", "--port", str(port), "--include-dashboard=false",
                        "--temp-dir", temp, "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "1",
                        "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=300)
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        yield f"127.0.0.1:{port}"
    finally:
        ray_cluster.kill_tree_of(temp)


def _where() -> tuple[int, str | None]:
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_run_with_gpus__rasa_fit_in_a_gpu_task_equals_the_in_process_fit(one_gpu_node: str) -> None:
    cfg = load_config("tiny", ["rasa.rounds=2", "rasa.views=1", "rasa.min_steps=20", "rasa.max_images=12"])
    torch.manual_seed(0)
    backbone = build_backbone(cfg.train.model, drop_path=0.0)
    images = EvalSet.from_records("fit", [_png(im) for im, _, _ in iter_images(12, seed=1, size=64)],
                                  cfg.train.model.patch_size)
    here, here_stats = run_with_gpus(fit_rasa_on_device, 0, backbone, images, cfg.rasa, 8, 0, "auto")
    pid, visible = run_with_gpus(_where, 1)
    assert pid != os.getpid() and visible == "0"  # a Ray worker holding the declared GPU
    remote, remote_stats = run_with_gpus(fit_rasa_on_device, 1, backbone, images, cfg.rasa, 8, 0, "auto")
    expected_device = "cpu" if not torch.cuda.is_available() else remote_stats["device"]
    assert remote_stats["device"] == expected_device and remote_stats["features_per_s"] > 0
    if remote_stats["device"] == here_stats["device"]:
        assert torch.equal(remote.matrix, here.matrix)
        assert [r.mse_before for r in remote.rounds] == [r.mse_before for r in here.rounds]
    with pytest.raises(RuntimeError, match="offers 1 GPU"):
        run_with_gpus(_where, 2)


def _png(image: object) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")  # type: ignore[attr-defined]
    return buf.getvalue()

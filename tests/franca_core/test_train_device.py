"""Training on a device (issue 19, GPU correctness): TF32, pinned batches, the run's device, activation checkpointing.

The CUDA side of each runs in tests/gpu (marked ``gpu``); these check what a CPU can: nothing changes on a CPU, a
GPU asked for without one is one clear error, and activation checkpointing computes the same step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from franca_core.config import TrainConfig, load_config
from franca_core.data.collate import MultiCropCollate
from franca_core.data.multicrop import MultiCropAugmentation
from franca_core.data.multicrop_loader import multicrop_loader
from franca_core.data.synthetic import iter_images
from franca_core.train.driver import training_device
from franca_core.train.precision import enable_tf32
from franca_core.train.trainer import FrancaTrainer

SMALL = ["train.model.depth=2", "train.optim.batch_size=4", "train.crops.n_local=2", "train.optim.warmup_steps=2",
         "train.model.drop_path=0.1"]


def _batch(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    aug = MultiCropAugmentation(cfg.crops)
    collate = MultiCropCollate(cfg.masking, cfg.model.patch_size, torch.Generator().manual_seed(0))
    return collate([aug(im) for im, _, _ in iter_images(cfg.optim.batch_size, seed=0, size=64)])


def test_enable_tf32__a_cpu_device_changes_nothing() -> None:
    before = torch.get_float32_matmul_precision()
    assert enable_tf32(torch.device("cpu")) is False
    assert torch.get_float32_matmul_precision() == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_training_device__use_gpu_without_cuda_is_one_clear_error() -> None:
    assert training_device(load_config("tiny").train) == torch.device("cpu")
    with pytest.raises(RuntimeError, match=r"train.use_gpu is true but torch.cuda.is_available\(\) is false"):
        training_device(load_config("tiny", ["train.use_gpu=true"]).train)


def test_multicrop_loader__pins_host_memory_only_for_cuda() -> None:
    cfg = load_config("tiny", ["train.optim.batch_size=2", "train.loader_workers=0"]).train
    images = [im for im, _, _ in iter_images(2, seed=0, size=64)]
    assert multicrop_loader(cfg, images).pin_memory is False
    assert multicrop_loader(cfg, images, device="cpu").pin_memory is False
    assert multicrop_loader(cfg, images, device=torch.device("cuda", 0)).pin_memory is True


def _counted(forward: Callable[..., Any], calls: list[int]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return forward(*args, **kwargs)
    return wrapper


def test_grad_checkpointing__same_losses_and_gradients_and_blocks_run_again() -> None:
    cfg_off = load_config("tiny", SMALL).train  # drop path 0.1: the recomputation must replay the same RNG
    cfg_on = load_config("tiny", [*SMALL, "train.grad_checkpointing=true"]).train
    batch = _batch(cfg_off)
    runs = []
    for cfg in (cfg_off, cfg_on):
        torch.manual_seed(0)
        trainer = FrancaTrainer(cfg)
        calls: list[int] = []
        block = trainer.student_core.backbone.blocks[0]
        block.forward = _counted(block.forward, calls)  # forward hooks do not fire when checkpointing recomputes
        torch.manual_seed(1)
        metrics = trainer.train_step(batch)
        grads = {n: p.grad.clone() for n, p in trainer.student_core.named_parameters() if p.grad is not None}
        runs.append((metrics, grads, len(calls)))
    (m_off, g_off, calls_off), (m_on, g_on, calls_on) = runs
    # globals and locals: one pass each; with checkpointing each runs again in the backward pass
    assert (calls_off, calls_on) == (2, 4), "activation checkpointing did not recompute the blocks"
    for key in ("loss", "dino", "ibot", "koleo"):
        assert m_on[key] == pytest.approx(m_off[key], rel=1e-5, abs=1e-6), key
    assert g_on.keys() == g_off.keys() and g_off
    for name, grad in g_off.items():
        torch.testing.assert_close(g_on[name], grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")

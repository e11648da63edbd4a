"""RNG states in checkpoints (franca_core/checkpoint.py): round trip, and checkpoints without CUDA states."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from franca_core.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from franca_core.config import load_config
from franca_core.train.trainer import FrancaTrainer


def _draws() -> tuple[float, float, list[float]]:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_rng_state__round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = save_checkpoint({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = _draws()
    random.seed(7), np.random.seed(8), torch.manual_seed(9)  # another process state
    set_rng_state(load_checkpoint(path)["rng"])
    assert _draws() == expected
    state = load_checkpoint(path)["rng"]
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        assert "cuda" not in state, "a process that never initialised CUDA saves no CUDA state"


def test_set_rng_state__checkpoint_without_cuda_states_loads(tmp_path: Path) -> None:
    cfg = load_config("tiny", ["train.model.depth=1", "train.heads.n_levels=1"]).train
    torch.manual_seed(0)
    trainer = FrancaTrainer(cfg)
    state = trainer.state_dict({"position": 2})
    state["rng"].pop("cuda", None)  # as written on a CPU, or before CUDA states were saved
    path = save_checkpoint(state, tmp_path / "old.pt")
    expected = torch.rand(4)  # what the checkpoint's CPU generator draws next
    torch.manual_seed(2)
    resumed = FrancaTrainer(cfg)
    assert resumed.load_state_dict(load_checkpoint(path)) == {"position": 2}
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA (tests/gpu covers CUDA)")
def test_set_rng_state__cuda_states_on_a_machine_without_cuda_are_ignored(tmp_path: Path) -> None:
    torch.manual_seed(4)
    state = rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.zeros(16, dtype=torch.uint8)]  # a 2-GPU run's
    path = save_checkpoint({"rng": state}, tmp_path / "gpu.pt")
    expected = torch.rand(3)
    torch.manual_seed(5)
    set_rng_state(load_checkpoint(path)["rng"])
    assert torch.equal(torch.rand(3), expected)

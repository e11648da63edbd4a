"""Resume on CUDA equals the uninterrupted run, because checkpoints carry the CUDA RNG (issue 19; marked ``gpu``).

Drop path draws its masks from the CUDA generator, so a resumed run that restored only the CPU RNG trains on other
masks. CUDA kernels need not be bitwise deterministic (atomics in some backward passes), so "equal" is measured
against two uninterrupted runs: the resumed run must be as close to the uninterrupted one as a repeat of it is (within
10x, at least 1e-6), and a resume without the CUDA states (the control) must be further away than that.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch

from franca_core.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from franca_core.config import TrainConfig, load_config
from franca_core.train.trainer import Batch, FrancaTrainer

# Loaded by path: the test suite runs in importlib mode, where test folders are not on sys.path.
_spec = importlib.util.spec_from_file_location("test_trainer",
                                               Path(__file__).parents[1] / "franca_core" / "test_trainer.py")
test_trainer = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(test_trainer)  # type: ignore[union-attr]

pytestmark = pytest.mark.gpu

OVERRIDES = ["train.model.depth=4", "train.optim.batch_size=8", "train.crops.n_local=2", "train.optim.warmup_steps=2",
             "train.optim.freeze_last_layer_steps=1", "train.model.drop_path=0.2"]


_batches = test_trainer._batches  # the trainer tests' seeded multi-crop batches


def _steps(trainer: FrancaTrainer, batches: list[Batch]) -> None:
    for b in batches:
        trainer.train_step({k: v.to(trainer.device) for k, v in b.items()})


def _uninterrupted(cfg: TrainConfig, batches: list[Batch], device: torch.device) -> FrancaTrainer:
    torch.manual_seed(1)
    trainer = FrancaTrainer(cfg).to(device)
    _steps(trainer, batches)
    return trainer


def _resumed(cfg: TrainConfig, batches: list[Batch], device: torch.device, path: Path, cuda_rng: bool) -> FrancaTrainer:
    torch.manual_seed(1)
    first = FrancaTrainer(cfg).to(device)
    _steps(first, batches[:3])
    state = first.state_dict()
    if not cuda_rng:
        state["rng"].pop("cuda")
    save_checkpoint(state, path)
    torch.manual_seed(12345)  # a new process: other CPU and CUDA generator states
    resumed = FrancaTrainer(cfg).to(device)
    resumed.load_state_dict(load_checkpoint(path))
    _steps(resumed, batches[3:])
    return resumed


def _max_diff(a: FrancaTrainer, b: FrancaTrainer) -> float:
    pairs = zip(a.student_core.state_dict().values(), b.student_core.state_dict().values())
    return max(float((x.float() - y.float()).abs().max()) for x, y in pairs)


def test_checkpoint__resume_on_cuda_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    device = torch.device("cuda")
    cfg = load_config("tiny", OVERRIDES).train
    batches = _batches(cfg, 6)
    straight = _uninterrupted(cfg, batches, device)
    noise = _max_diff(straight, _uninterrupted(cfg, batches, device))
    resumed = _resumed(cfg, batches, device, tmp_path / "with.pt", cuda_rng=True)
    assert "cuda" in load_checkpoint(tmp_path / "with.pt")["rng"], "a CUDA run's checkpoint lacks its CUDA RNG"
    control = _resumed(cfg, batches, device, tmp_path / "without.pt", cuda_rng=False)
    tol = max(10 * noise, 1e-6)
    assert _max_diff(straight, resumed) <= tol, f"resumed differs by {_max_diff(straight, resumed):.3g} > {tol:.3g}"
    assert _max_diff(straight, control) > tol, "without the CUDA RNG the resume should differ: drop path unused?"


def test_set_rng_state__cuda_states_round_trip_and_a_device_count_mismatch_is_tolerated(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(3)
    torch.rand(1, device="cuda")  # initialises CUDA: its generators now have a state to save
    state = rng_state()
    assert len(state["cuda"]) == torch.cuda.device_count()
    expected = torch.rand(3, device="cuda")
    state["cuda"] = [*state["cuda"], state["cuda"][0].clone()]  # written on a machine with one device more
    path = save_checkpoint({"rng": state}, tmp_path / "rng.pt")
    torch.manual_seed(9)
    with caplog.at_level(logging.WARNING, logger="franca_core.checkpoint"):
        set_rng_state(load_checkpoint(path)["rng"])
    assert torch.equal(torch.rand(3, device="cuda"), expected)
    assert "restoring the first" in caplog.text

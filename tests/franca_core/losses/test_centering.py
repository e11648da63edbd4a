from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from franca_core.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from franca_core.config import load_config
from franca_core.losses.centering import TeacherCentering
from franca_core.train.trainer import FrancaTrainer

_spec = importlib.util.spec_from_file_location("test_trainer", Path(__file__).parents[1] / "test_trainer.py")
test_trainer = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(test_trainer)  # type: ignore[union-attr]


def test_centering__first_targets_are_sharpened_softmax_and_centre_moves_by_the_momentum() -> None:
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    c = TeacherCentering(momentum=0.9)
    targets = c("dino.0", logits, 0.04)
    assert torch.allclose(targets, torch.softmax(logits / 0.04, -1))
    assert torch.allclose(c.centers["dino.0"], 0.1 * logits.mean(0, keepdim=True))
    second = c("dino.0", logits, 0.04)
    assert torch.allclose(second, torch.softmax((logits - 0.1 * logits.mean(0)) / 0.04, -1))


def test_centering__a_constant_bias_on_one_prototype_is_removed() -> None:
    """DINO's point: a prototype the teacher favours for every image stops dominating the targets."""
    logits = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))
    biased = logits + torch.tensor([5.0, 0, 0, 0])
    c = TeacherCentering(momentum=0.5)
    for _ in range(60):
        targets = c("x", biased, 0.5)
    assert targets[:, 0].mean() < 0.5, targets.mean(0)  # uncentred: softmax puts ~all mass on prototype 0
    assert torch.softmax(biased / 0.5, -1)[:, 0].mean() > 0.99


def test_centering__an_empty_batch_keeps_the_centre() -> None:
    c = TeacherCentering()
    c("ibot.0", torch.ones(3, 4), 0.1)
    before = c.centers["ibot.0"].clone()
    assert c("ibot.0", torch.ones(0, 4), 0.1).shape == (0, 4)
    assert torch.equal(c.centers["ibot.0"], before)


def test_trainer__centering_trains_and_its_centres_resume(tmp_path: Path) -> None:
    cfg = load_config("tiny", [*test_trainer.SMALL, "train.loss.teacher_targets=centering"]).train
    batches = test_trainer._batches(cfg, 3)
    torch.manual_seed(0)
    trainer = FrancaTrainer(cfg)
    metrics = [trainer.train_step(b) for b in batches[:2]]
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    assert {"dino.0", "dino.4", "ibot.0", "ibot.4"} <= set(trainer.centering.centers)  # type: ignore[union-attr]
    path = save_checkpoint(trainer.state_dict(), tmp_path / "c.pt")
    resumed, state = FrancaTrainer(cfg), load_checkpoint(path)
    resumed.load_state_dict(state)
    for name, center in trainer.centering.centers.items():  # type: ignore[union-attr]
        assert torch.equal(resumed.centering.centers[name], center)  # type: ignore[union-attr]
    after_resume = resumed.train_step(batches[2])["loss"]
    set_rng_state(state["rng"])  # drop path draws from the RNG: the uninterrupted step starts from the same state
    assert after_resume == trainer.train_step(batches[2])["loss"]

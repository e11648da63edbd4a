from __future__ import annotations

from pathlib import Path

import pytest
import torch

from franca_core.checkpoint import load_checkpoint, save_checkpoint
from franca_core.config import TrainConfig, load_config
from franca_core.data.collate import MultiCropCollate
from franca_core.data.multicrop import MultiCropAugmentation
from franca_core.data.synthetic import iter_images
from franca_core.train.trainer import FrancaTrainer

SMALL = ["train.model.depth=2", "train.optim.batch_size=4", "train.crops.n_local=2", "train.optim.total_steps=20",
         "train.optim.warmup_steps=2", "train.optim.freeze_last_layer_steps=1", "train.model.drop_path=0.1"]


def _cfg() -> TrainConfig:
    return load_config("tiny", SMALL).train


def _batches(cfg: TrainConfig, n: int) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    aug = MultiCropAugmentation(cfg.crops)
    collate = MultiCropCollate(cfg.masking, cfg.model.patch_size, torch.Generator().manual_seed(0))
    images = [im for im, _, _ in iter_images(cfg.optim.batch_size * n, seed=0, size=64)]
    b = cfg.optim.batch_size
    return [collate([aug(im) for im in images[i * b : (i + 1) * b]]) for i in range(n)]


def test_train_step__finite_metrics_and_teacher_moves() -> None:
    cfg = _cfg()
    torch.manual_seed(0)
    trainer = FrancaTrainer(cfg)
    before = trainer.teacher.backbone.pos_embed.detach().clone()
    metrics = [trainer.train_step(b) for b in _batches(cfg, 3)]
    assert all(torch.isfinite(torch.tensor(list(m.values()))).all() for m in metrics), metrics
    assert {"loss", "dino", "ibot", "koleo", "dino_l0", "ibot_l4", "lr", "momentum", "teacher_temp"} <= set(metrics[0])
    assert trainer.step == 3
    assert not torch.equal(before, trainer.teacher.backbone.pos_embed), "EMA did not move the teacher"


def test_train_step__prototypes_frozen_during_first_steps() -> None:
    cfg = load_config("tiny", [*SMALL, "train.optim.freeze_last_layer_steps=2"]).train
    trainer = FrancaTrainer(cfg)
    protos = trainer.student_core.dino_head.levels[0].prototypes.weight
    first = protos.detach().clone()
    batches = _batches(cfg, 3)
    trainer.train_step(batches[0])
    trainer.train_step(batches[1])
    assert torch.equal(first, protos), "prototypes moved while frozen"
    trainer.train_step(batches[2])
    assert not torch.equal(first, protos)


def test_checkpoint__resume_equals_uninterrupted(tmp_path: Path) -> None:
    cfg = _cfg()
    batches = _batches(cfg, 6)
    torch.manual_seed(1)
    straight = FrancaTrainer(cfg)
    for b in batches:
        straight.train_step(b)

    torch.manual_seed(1)
    first = FrancaTrainer(cfg)
    for b in batches[:3]:
        first.train_step(b)
    path = save_checkpoint(first.state_dict({"epoch": 0, "position": 3}), tmp_path / "ckpt.pt")
    torch.manual_seed(12345)  # a resumed process starts with another RNG state: the checkpoint must restore it
    resumed = FrancaTrainer(cfg)
    data_state = resumed.load_state_dict(load_checkpoint(path))
    assert data_state == {"epoch": 0, "position": 3} and resumed.step == 3
    for b in batches[3:]:
        resumed.train_step(b)
    for (name, a), (_, b) in zip(straight.student_core.state_dict().items(), resumed.student_core.state_dict().items()):
        assert torch.equal(a, b), f"student {name} differs after resume"
    for (name, a), (_, b) in zip(straight.teacher.state_dict().items(), resumed.teacher.state_dict().items()):
        assert torch.equal(a, b), f"teacher {name} differs after resume"


def test_load_state_dict__other_architecture_is_an_error(tmp_path: Path) -> None:
    state = FrancaTrainer(_cfg()).state_dict()
    other = FrancaTrainer(load_config("tiny", [*SMALL, "train.model.depth=3"]).train)
    with pytest.raises(ValueError, match="another architecture"):
        other.load_state_dict(state)


def test_save_checkpoint__atomic_no_partial_file(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self) -> tuple:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"x": torch.ones(3), "bad": Boom()}, tmp_path / "ckpt.pt")
    assert list(tmp_path.iterdir()) == [], "a failed save left files behind"
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "ckpt.pt")


def test_train_step__bf16_autocast_close_to_fp32_and_losses_in_fp32() -> None:
    cfg32 = load_config("tiny", [*SMALL, "train.precision=fp32"]).train
    cfg16 = load_config("tiny", [*SMALL, "train.precision=bf16"]).train
    batch = _batches(cfg32, 1)[0]
    torch.manual_seed(0)
    fp32 = FrancaTrainer(cfg32)
    torch.manual_seed(0)
    bf16 = FrancaTrainer(cfg16)
    seen: list[torch.dtype] = []
    hook = bf16.student_core.backbone.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out = bf16.student_outputs(batch)
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}, f"the backbone's matmuls did not run in bfloat16: {seen}"
    assert all(t.dtype == torch.float32 for t in out["dino_global"]), "the losses must see float32 logits"
    torch.manual_seed(1)  # the same drop-path draws in both steps: only the precision differs
    m32 = fp32.train_step(batch)
    torch.manual_seed(1)
    m16 = bf16.train_step(batch)
    assert m16["loss"] != m32["loss"], "autocast had no effect"
    assert abs(m16["loss"] - m32["loss"]) < 0.02 * abs(m32["loss"]), (m16["loss"], m32["loss"])
    assert all(p.dtype == torch.float32 for p in bf16.student_core.parameters())

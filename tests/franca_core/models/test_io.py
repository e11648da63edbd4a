"""Backbone files: training checkpoints and exported safetensors, and the errors for the wrong file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from franca_core.checkpoint import save_checkpoint
from franca_core.config import load_config
from franca_core.models.io import load_backbone, save_backbone
from franca_core.models.rasa_backbone import RasaBackbone
from franca_core.models.student_teacher import build_model


def _checkpoint(tmp_path: Path, overrides: list[str] | None = None) -> tuple[Path, torch.nn.Module]:
    cfg = load_config("tiny", overrides or []).train
    torch.manual_seed(0)
    teacher = build_model(cfg, drop_path=0.0)
    path = save_checkpoint({"student": teacher.state_dict(), "teacher": teacher.state_dict(), "step": 0,
                            "config": cfg.model_dump(mode="json")}, tmp_path / "ckpt.pt")
    return path, teacher


def test_load_backbone__training_checkpoint_gives_the_teacher_backbone(tmp_path: Path) -> None:
    path, teacher = _checkpoint(tmp_path)
    loaded = load_backbone(path)
    assert loaded.model_cfg.embed_dim == 192 and loaded.rasa_matrix is None
    ref = teacher.backbone.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.backbone.state_dict().items())


def test_load_backbone__another_architecture_raises_naming_the_fields(tmp_path: Path) -> None:
    path, _ = _checkpoint(tmp_path)
    expected = load_config("tiny", ["train.model.depth=4", "train.model.embed_dim=96"]).train.model
    with pytest.raises(ValueError, match=r"another architecture: embed_dim=192 \(expected 96\), depth=6"):
        load_backbone(path, expected=expected)


def test_load_backbone__weights_that_do_not_fit_the_stated_config_raise(tmp_path: Path) -> None:
    path, _ = _checkpoint(tmp_path)
    state = torch.load(path, weights_only=True)
    state["config"]["model"]["embed_dim"] = 96
    state["config"]["model"]["num_heads"] = 3
    bad = save_checkpoint(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit its stated architecture.*shape mismatch"):
        load_backbone(bad)


def test_load_backbone__not_a_franca_checkpoint_raises(tmp_path: Path) -> None:
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, other)
    with pytest.raises(ValueError, match="not a Franca training checkpoint"):
        load_backbone(other)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_backbone(tmp_path / "missing.pt")


def test_save_backbone__safetensors_round_trip_with_rasa_matrix(tmp_path: Path) -> None:
    path, teacher = _checkpoint(tmp_path)
    loaded = load_backbone(path)
    matrix = torch.eye(192) - torch.outer(torch.ones(192), torch.ones(192)) / 192
    out = save_backbone(RasaBackbone(loaded.backbone, matrix), loaded.model_cfg, tmp_path / "b.safetensors")
    again = load_backbone(out, expected=loaded.model_cfg)
    assert torch.equal(again.rasa_matrix, matrix)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = loaded.model(with_rasa=False).forward_masked(x), again.model().forward_masked(x)
    assert torch.equal(a["cls"], b["cls"]) and torch.allclose(a["patch"] @ matrix, b["patch"], atol=1e-6)

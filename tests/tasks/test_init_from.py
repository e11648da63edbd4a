"""``train.init_from``: its content in the rasa / evaluate keys, the weights the training stages start from, and a
released-layout model (DINOv3) through the rasa stage as an upstream result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from franca_core.config import ModelConfig, load_config
from franca_core.models.backbone import build_backbone
from tasks.common.contract import load_stage
from tasks.common.digests import content_digest
from tasks.common.model_io import init_backbone_state, init_result
from tasks.common.runner import run_stage
from tasks.common.store import StageResult
from tests.franca_cli.test_model_cli import RASA_FAST, _png
from tests.franca_core.models.test_foreign_layouts import _dinov2_reference, _dinov3_reference


def _upstream(stage: str, n: int) -> StageResult:
    return StageResult(stage=stage, uri=f"/nowhere/{stage}", input_digest=str(n) * 64, digest=str(n + 1) * 64)


def test_init_from__its_content_is_in_the_rasa_and_evaluate_keys(tmp_path: Path) -> None:
    weights = tmp_path / "init.pth"
    weights.write_bytes(b"first weights")
    cfg = load_config("tiny", [f"train.init_from={weights}"])
    inputs = {"rasa": {"model": _upstream("highres", 1), "dataset": _upstream("dedup", 3)},
              "evaluate": {"model": _upstream("highres", 1), "rasa": _upstream("rasa", 5)}}
    before = {name: load_stage(name).key(cfg, inputs[name]) for name in inputs}
    for key in before.values():
        assert key.parts["files"]["train.init_from"] == content_digest(str(weights))
    weights.write_bytes(b"other weights, same path")
    after = {name: load_stage(name).key(cfg, inputs[name]).digest for name in inputs}
    assert all(after[name] != before[name].digest for name in inputs)
    unset = load_stage("rasa").key(load_config("tiny"), inputs["rasa"])
    assert unset.parts["files"]["train.init_from"] is None


def test_init_backbone_state__dinov2_weights_at_the_configured_size(tmp_path: Path) -> None:
    _, orig, _ = _dinov2_reference(registers=4, swiglu=False)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in orig.items()}}, tmp_path / "dinov2.pth")
    cfg = ModelConfig(embed_dim=64, depth=2, num_heads=4, patch_size=14, img_size=112, num_registers=4, ffn="mlp")
    state = init_backbone_state(str(tmp_path / "dinov2.pth"), cfg, tmp_path / "dl")
    model = build_backbone(cfg, drop_path=0.0)
    model.load_state_dict(state)  # strict: every weight, position grid resized from 4x4 to 8x8
    assert state["pos_embed"].shape == (1, 1 + 4 + 64, 64)
    assert torch.equal(state["blocks.1.attn.qkv.weight"], orig["blocks.1.attn.qkv.weight"])
    with pytest.raises(ValueError, match=r"another architecture: .*ffn=mlp \(expected swiglu\)"):
        init_backbone_state(str(tmp_path / "dinov2.pth"), cfg.model_copy(update={"ffn": "swiglu"}), tmp_path / "x")
    _, dinov3 = _dinov3_reference(swiglu=False)
    torch.save(dinov3, tmp_path / "dinov3.pth")
    v3 = ModelConfig(embed_dim=64, depth=2, num_heads=2, patch_size=16, img_size=64, num_registers=4)
    with pytest.raises(ValueError, match="FrancaViT cannot represent"):
        init_backbone_state(str(tmp_path / "dinov3.pth"), v3, tmp_path / "y")


def test_rasa_stage__fits_a_dinov3_init_from_model_given_as_its_upstream(tmp_path: Path) -> None:
    _, dinov3 = _dinov3_reference(swiglu=False)
    torch.save(dinov3, tmp_path / "dinov3.pth")
    images = tmp_path / "images" / "c0"
    images.mkdir(parents=True)
    for i in range(8):
        (images / f"{i}.png").write_bytes(_png(i, 64))
    cfg = load_config("tiny", [f"storage.root={tmp_path / 'store'}", f"rasa.dataset={images.parent}",
                               f"train.init_from={tmp_path / 'dinov3.pth'}", *RASA_FAST])
    result = run_stage("rasa", cfg, model=init_result(str(tmp_path / "dinov3.pth")), dataset=_upstream("dedup", 3))
    assert result.stats["init_from_sha256"] == content_digest(str(tmp_path / "dinov3.pth"))
    assert load_file(result.files["rasa"])["rasa.matrix"].shape == (64, 64)

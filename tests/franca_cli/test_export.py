"""``franca export``: timm weights + config that timm loads to the same features, and an ONNX graph checked with
onnxruntime against the torch features (tiny backbones: embed_dim 64, depth 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from franca_cli.main import main
from franca_core import export
from franca_core.config import ModelConfig
from franca_core.models.backbone import build_backbone
from franca_core.models.io import load_backbone, save_backbone

TINY = {"embed_dim": 64, "depth": 2, "num_heads": 2, "patch_size": 8, "img_size": 32, "drop_path": 0.0}


def tiny_model(folder: Path, rasa: bool = True, **fields: object) -> Path:
    """A seeded backbone (non-trivial LayerScale, so every block matters) with a random RASA matrix, saved."""
    cfg = ModelConfig(**{**TINY, **fields})
    torch.manual_seed(0)
    backbone = build_backbone(cfg, drop_path=0.0)
    for block in backbone.blocks:
        block.ls1.gamma.data.normal_()
        block.ls2.gamma.data.normal_()
    matrix = torch.randn(64, 64) / 8 if rasa else None
    return save_backbone(backbone, cfg, folder / "model.safetensors", rasa_matrix=matrix)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["export", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


FFNS = [{"num_registers": 2}, {"num_registers": 0, "ffn": "mlp"}]


@pytest.mark.parametrize("fields", FFNS, ids=["swiglu-registers", "mlp"])
def test_export_timm__timm_create_model_and_load_state_dict_give_our_features(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fields: dict) -> None:
    if "ffn" in fields and "ffn" not in ModelConfig.model_fields:
        pytest.skip("this ModelConfig has no ffn field (GELU-MLP backbones are not buildable here)")
    import timm
    from safetensors.torch import load_file

    weights = tiny_model(tmp_path, **fields)
    code, out, _ = run_cli(capsys, str(weights), "--format", "timm", str(tmp_path / "timm"))
    assert code == 0 and json.loads(out)["max_abs_diff"] < 1e-5
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    model = timm.create_model(config["architecture"], pretrained=False, **config["kwargs"]).eval()
    model.load_state_dict(load_file(str(tmp_path / "timm" / "model.safetensors")))  # strict: every key fits
    rasa = load_file(str(tmp_path / "timm" / "rasa.safetensors"))["rasa.matrix"]
    loaded = load_backbone(weights)
    images = export.example_images(loaded.model_cfg, batch=3, seed=1)
    with torch.no_grad():
        tokens = model.forward_features(images)
        cls, patch = export.feature_model(loaded)(images)
    torch.testing.assert_close(tokens[:, 0], cls, atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens[:, config["num_prefix_tokens"]:] @ rasa, patch, atol=1e-5, rtol=0)
    assert config["num_prefix_tokens"] == 1 + fields["num_registers"]


def test_export_onnx__onnxruntime_matches_torch_and_the_difference_is_printed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnxruntime as ort

    weights = tiny_model(tmp_path)
    code, out, _ = run_cli(capsys, str(weights), "--format", "onnx", str(tmp_path / "franca.onnx"))
    summary = json.loads(out)
    print(f"ONNX vs torch, max abs difference: {summary['max_abs_diff']:.2e}")
    assert code == 0 and 0 <= summary["max_abs_diff"] < 1e-3
    session = ort.InferenceSession(str(tmp_path / "franca.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["cls", "patch"]
    loaded = load_backbone(weights)
    images = export.example_images(loaded.model_cfg, batch=5, seed=2)  # another batch size than at export
    cls, patch = session.run(None, {"images": images.numpy()})
    assert cls.shape == (5, 64) and patch.shape == (5, 16, 64)
    with torch.no_grad():
        want = export.feature_model(loaded)(images)
    assert float((torch.from_numpy(patch) - want[1]).abs().max()) < 1e-3  # RASA is in the graph
    assert float((torch.from_numpy(cls) - want[0]).abs().max()) < 1e-3


def test_export__unreadable_model_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, str(tmp_path / "missing.safetensors"), "--format", "onnx", str(tmp_path / "o"))
    assert code == 2 and out == "" and "missing.safetensors" in err and err.count("\n") == 1


def test_feature_model__dim_out_of_range_is_one_clear_error(tmp_path: Path) -> None:
    loaded = load_backbone(tiny_model(tmp_path))
    with pytest.raises(ValueError, match=r"dim=65 is out of range: .* 64 dimensions"):
        export.feature_model(loaded, dim=65)


@pytest.mark.parametrize("fmt", ["timm", "onnx"])
def test_export__a_timm_built_backbone_keeps_its_timm_name(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           fmt: str) -> None:
    """A backbone only timm builds (``timm:<name>:<weights>``, as DINOv3 loads) exports under its own timm name."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ref = timm.create_model("test_vit", pretrained=False)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "w.safetensors"))
    out = tmp_path / ("timm" if fmt == "timm" else "m.onnx")
    code, stdout, _ = run_cli(capsys, f"timm:test_vit:{tmp_path / 'w.safetensors'}", "--format", fmt, str(out))
    assert code == 0 and json.loads(stdout)["max_abs_diff"] < (1e-5 if fmt == "timm" else 1e-3)
    if fmt == "timm":
        config = json.loads((out / "config.json").read_text())
        assert config["architecture"] == "test_vit" and not config["rasa"]

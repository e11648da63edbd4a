from __future__ import annotations

import pytest
import torch

from franca_core.config import load_config
from franca_core.models.backbone import build_backbone, swiglu_hidden_dim


def test_swiglu_hidden_dim__paper_widths() -> None:
    assert [swiglu_hidden_dim(d) for d in (768, 1024, 1536)] == [2048, 2736, 4096]


@pytest.mark.parametrize(("profile", "millions", "tol"), [("vitb14", 86, 2), ("vitl14", 304, 6), ("vitg14", 1137, 25)])
def test_build_backbone__paper_parameter_counts_on_meta(profile: str, millions: float, tol: float) -> None:
    cfg = load_config(profile).train.model
    with torch.device("meta"):
        model = build_backbone(cfg)
    n = sum(p.numel() for name, p in model.named_parameters() if name != "mask_token") / 1e6
    assert abs(n - millions) < tol, f"{profile}: {n:.1f}M parameters, paper ~{millions}M"
    assert next(model.parameters()).device.type == "meta"


def test_forward_crops__multi_resolution_and_finite() -> None:
    cfg = load_config("tiny").train.model
    model = build_backbone(cfg).eval()
    crops = [torch.randn(3, 3, 64, 64), torch.randn(5, 3, 32, 32)]
    out = model.forward_crops(crops)
    assert out[0]["cls"].shape == (3, 192) and out[0]["patch"].shape == (3, 64, 192)
    assert out[1]["patch"].shape == (5, 16, 192)
    assert all(torch.isfinite(o[k]).all() for o in out for k in o), "NaN/inf in backbone output"


def test_forward_masked__mask_token_replaces_patch_before_pos_embed() -> None:
    cfg = load_config("tiny", ["train.model.layerscale_init=1e-5"]).train.model  # the paper's value
    model = build_backbone(cfg).eval()
    torch.nn.init.normal_(model.mask_token)
    x = torch.randn(2, 3, 64, 64)
    masks = torch.zeros(2, 64, dtype=torch.bool)
    masks[0, :10] = True
    with torch.no_grad():
        plain, masked = model.forward_masked(x), model.forward_masked(x, masks)
        # With LayerScale at 1e-5 the blocks are near-identity, so a masked output token is about
        # norm(mask_token + pos_embed of its position): the same for every masked position's content.
        pos = model.pos_embed[0, model.num_prefix_tokens :][:10]
        expected = model.norm(model.mask_token + pos)
    assert torch.allclose(masked["patch"][0, :10], expected, atol=1e-2), "masked token is not mask_token + pos"
    assert torch.allclose(plain["patch"][1], masked["patch"][1], atol=1e-6), "unmasked sample changed"
    assert torch.allclose(plain["patch"][0, 10:], masked["patch"][0, 10:], atol=1e-2)
    assert not torch.allclose(plain["patch"][0, :10], masked["patch"][0, :10], atol=1e-1), "mask had no effect"


def test_backbone__pos_embed_interpolates_for_other_resolutions() -> None:
    model = build_backbone(load_config("tiny").train.model).eval()
    with torch.no_grad():
        out = model.forward_masked(torch.randn(1, 3, 128, 96))
    assert out["patch"].shape == (1, 16 * 12, 192)

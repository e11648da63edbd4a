"""Checkpoints in the original key layouts of DINOv2, Franca and DINOv3 (and timm files) load with the original
architecture's features.

Nothing is downloaded: each test draws random weights for timm's implementation of the original architecture (the
reference), writes them in the ORIGINAL repository's key layout (``facebookresearch/dinov2``, ``valeoai/Franca``,
``facebookresearch/dinov3``: register tokens, CLS position, chunked blocks, fused SwiGLU, storage tokens, K-masked
QKV bias, RoPE periods, teacher/backbone prefixes) and checks that the loaded backbone's CLS and patch tokens equal
the reference's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from franca_core.models.backbone import FrancaViT
from franca_core.models.foreign import TimmArch, TimmBackbone
from franca_core.models.io import load_backbone, load_model_spec, save_backbone

D, DEPTH = 64, 2


def _randomize(model: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Every tensor random (layer scales and norms included, so no block is a near no-op); loaded into ``model``."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in model.state_dict().items():
        r = torch.randn(v.shape, generator=g) * 0.2
        state[k] = r + 1 if "norm" in k and k.endswith("weight") else r
    model.load_state_dict(state)
    return state


def _tokens(ref: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out = ref.forward_features(x)  # type: ignore[operator]
    return {"cls": out[:, 0], "patch": out[:, ref.num_prefix_tokens:]}  # type: ignore[misc]


def _assert_same(model: nn.Module, ref: nn.Module, size: int) -> None:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model.forward_masked(x), _tokens(ref.eval(), x)  # type: ignore[operator]
    assert ours["patch"].shape == theirs["patch"].shape
    for k in ("cls", "patch"):
        assert torch.allclose(ours[k], theirs[k], atol=1e-4, rtol=1e-4), (k, (ours[k] - theirs[k]).abs().max())


def _dinov2_reference(registers: int, swiglu: bool) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    """timm's DINOv2 (``vit_*_dinov2``) at tiny size with random weights, and those weights in DINOv2's layout."""
    kwargs: dict[str, Any] = {"embed_dim": D, "depth": DEPTH, "num_heads": 4, "img_size": 56, "dynamic_img_size": True}
    if swiglu:  # DINOv2's fused SwiGLU width for D=64: 8 * ceil(floor(4D * 2/3) / 8) = 176 (fc1 packs 2 x 176)
        kwargs["mlp_ratio"] = 352 / D
    if registers:
        kwargs["reg_tokens"] = registers
    name = f"vit_{'giant' if swiglu else 'small'}_patch14{'_reg4' if registers else ''}_dinov2"
    ref = timm.create_model(name, pretrained=False, **kwargs)
    state = _randomize(ref, seed=registers + 2 * swiglu)
    g = torch.Generator().manual_seed(7)
    orig = {k.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3") if swiglu else k: v
            for k, v in state.items()}
    orig["mask_token"] = torch.randn(1, D, generator=g)
    if registers:  # DINOv2: the CLS token has a position, the registers none (timm folds it into the CLS token)
        cls_pos = torch.randn(1, 1, D, generator=g) * 0.2
        orig["register_tokens"] = orig.pop("reg_token")
        orig["pos_embed"] = torch.cat([cls_pos, orig["pos_embed"]], dim=1)
        orig["cls_token"] = orig["cls_token"] - cls_pos
    return ref, orig, kwargs


def _chunked(state: dict[str, torch.Tensor], chunks: int, prefix: str) -> dict[str, torch.Tensor]:
    """DINOv2/Franca ``block_chunks``: ``blocks.<chunk>.<global index>.``, under a training-checkpoint prefix."""
    size = DEPTH // chunks
    out = {}
    for k, v in state.items():
        if k.startswith("blocks."):
            i, rest = k.split(".", 2)[1:]
            k = f"blocks.{int(i) // size}.{i}.{rest}"
        out[prefix + k] = v
    return out


@pytest.mark.parametrize(("registers", "swiglu"), [(0, False), (4, False), (0, True), (2, True)])
def test_dinov2_layout__features_equal_timm_dinov2(tmp_path: Path, registers: int, swiglu: bool) -> None:
    ref, orig, kwargs = _dinov2_reference(registers, swiglu)
    # timm's own converter reads our DINOv2-layout file back to the reference weights (the layout is DINOv2's)
    probe = timm.create_model(ref.default_cfg["architecture"], pretrained=False, **kwargs)
    probe.load_state_dict(checkpoint_filter_fn(dict(orig), probe))
    _assert_same(TimmBackbone(probe.eval(), TimmArch("probe")), ref, 56)
    path = tmp_path / "dinov2.pth"
    torch.save({"teacher": _chunked(orig, 2, "backbone.")} if registers else orig, path)  # teacher_checkpoint.pth
    loaded = load_model_spec(path, num_heads=4)
    assert isinstance(loaded.network, FrancaViT) and loaded.layout == "dinov2"
    cfg = loaded.model_cfg
    assert (cfg.embed_dim, cfg.depth, cfg.num_registers, cfg.ffn, cfg.img_size) == (
        D, DEPTH, registers, "swiglu" if swiglu else "mlp", 56)
    assert torch.equal(loaded.backbone.mask_token, orig["mask_token"])
    _assert_same(loaded.network, ref, 56)
    _assert_same(loaded.network, ref, 84)  # another grid: both interpolate the patch positions the same way


def test_franca_layout__training_checkpoint_with_heads_and_module_prefix(tmp_path: Path) -> None:
    """valeoai/Franca: ``{"teacher": {"module.backbone.blocks.<chunk>.<i>...", "module.dino_head...": ...}}``."""
    ref, orig, _ = _dinov2_reference(0, swiglu=True)
    teacher = _chunked(orig, 2, "module.backbone.")
    teacher["module.dino_head.mlp.0.weight"] = torch.zeros(8, D)
    teacher["module.ibot_head.mlp.0.weight"] = torch.zeros(8, D)
    path = tmp_path / "franca_vitb14.pth"
    torch.save({"teacher": teacher}, path)
    loaded = load_model_spec(path, num_heads=4)
    assert loaded.model_cfg.ffn == "swiglu" and loaded.model_cfg.depth == DEPTH
    _assert_same(loaded.network, ref, 56)
    # a DINOv2 full training checkpoint: {"model": {"teacher.backbone.*", "student.backbone.*"}, "iteration": n}
    wrapped = {"model": {**_chunked(orig, 1, "teacher.backbone."), **_chunked(orig, 1, "student.backbone.")},
               "iteration": torch.tensor(10)}
    torch.save(wrapped, tmp_path / "model_0000010.pth")
    _assert_same(load_model_spec(tmp_path / "model_0000010.pth", num_heads=4).network, ref, 56)


def _dinov3_reference(swiglu: bool) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """timm's DINOv3 (``Eva``) at tiny size, and its random weights in facebookresearch/dinov3's layout."""
    name = "vit_huge_plus_patch16_dinov3" if swiglu else "vit_small_patch16_dinov3_qkvb"
    ref = timm.create_model(name, pretrained=False, embed_dim=D, depth=DEPTH, num_heads=2, img_size=64)
    state = _randomize(ref, seed=11 + swiglu)
    orig: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.endswith("attn.q_bias"):  # DINOv3's K-masked QKV bias: one (3D,) bias, K part masked out (bias_mask)
            v_bias = state[k.replace("q_bias", "v_bias")]
            orig[k.replace("q_bias", "qkv.bias")] = torch.cat([v, torch.randn(D), v_bias])
            orig[k.replace("q_bias", "qkv.bias_mask")] = torch.cat([torch.ones(D), torch.zeros(D), torch.ones(D)])
            continue
        if k.endswith("attn.v_bias"):
            continue
        k = (k.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma").replace("reg_token", "storage_tokens")
             .replace("mlp.fc1_g", "mlp.w1").replace("mlp.fc1_x", "mlp.w2"))
        if swiglu:
            k = k.replace("mlp.fc2", "mlp.w3")
        orig[k] = v
    orig["mask_token"] = torch.randn(1, D)
    orig["rope_embed.periods"] = ref.rope.periods.clone()  # type: ignore[union-attr]
    return ref, orig


@pytest.mark.parametrize("swiglu", [False, True])
def test_dinov3_layout__features_equal_timm_dinov3(tmp_path: Path, swiglu: bool) -> None:
    ref, orig = _dinov3_reference(swiglu)
    path = tmp_path / "dinov3.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in orig.items()}} if swiglu else orig, path)
    loaded = load_model_spec(path, num_heads=None if swiglu else 2)  # DINOv3's RoPE periods give the heads
    assert isinstance(loaded.network, TimmBackbone) and loaded.layout == "dinov3"
    assert (loaded.model_cfg.embed_dim, loaded.model_cfg.num_registers, loaded.model_cfg.patch_size) == (D, 4, 16)
    _assert_same(loaded.network, ref, 64)
    _assert_same(loaded.network, ref, 96)  # RoPE: any grid
    # saved with a RASA matrix in this project's format, it reads back as the same timm model
    matrix = torch.eye(D) * 0.5
    out = save_backbone(loaded.model(), loaded.model_cfg, tmp_path / "own.safetensors", rasa_matrix=matrix)
    again = load_backbone(out)
    assert isinstance(again.network, TimmBackbone) and torch.equal(again.rasa_matrix, matrix)
    _assert_same(again.network, ref, 64)
    with pytest.raises(ValueError, match="FrancaViT cannot represent"):
        _ = again.backbone


def test_dinov3_layout__other_rope_periods_are_refused(tmp_path: Path) -> None:
    _, orig = _dinov3_reference(False)
    orig["rope_embed.periods"] = orig["rope_embed.periods"] * 2
    torch.save(orig, tmp_path / "dinov3.pth")
    with pytest.raises(ValueError, match="RoPE periods"):
        load_model_spec(tmp_path / "dinov3.pth", num_heads=2)


def test_timm_spec__safetensors_weights_load_into_the_named_model(tmp_path: Path) -> None:
    ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, embed_dim=D, depth=DEPTH, num_heads=4,
                            img_size=56)
    _randomize(ref, seed=3)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "w.safetensors"))
    # the name alone sizes the model: a tiny timm name for a quick test
    tiny = timm.create_model("test_vit", pretrained=False)
    _randomize(tiny, seed=4)
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(tmp_path / "tiny.safetensors"))
    loaded = load_model_spec(f"timm:test_vit:{tmp_path / 'tiny.safetensors'}")
    assert isinstance(loaded.network, TimmBackbone) and loaded.model_cfg.embed_dim == tiny.embed_dim
    _assert_same(loaded.network, tiny, 160)
    # without a name a bare timm state dict is refused with the spec to use
    with pytest.raises(ValueError, match="timm:<model name>"):
        load_model_spec(tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="needs a weights file"):
        load_model_spec("timm:test_vit")
    with pytest.raises(ValueError, match="does not fit timm test_vit"):
        load_model_spec(f"timm:test_vit:{tmp_path / 'w.safetensors'}")

"""High-resolution adaptation: position-grid resize on known grids, config, and a short run at 2x resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from franca_core.config import HighresConfig, PipelineConfig, load_config
from franca_core.data.datasets import ParquetImageDataset
from franca_core.highres import adapt_highres, highres_train_config, resize_pos_embed, resized_backbone
from franca_core.models.backbone import build_backbone
from franca_core.models.io import load_backbone


def _tiny():
    cfg = load_config("tiny").train
    torch.manual_seed(0)
    return build_backbone(cfg.model, drop_path=0.0).eval(), cfg


def test_resize_pos_embed__same_grid_is_exact_at_the_original_resolution() -> None:
    model, cfg = _tiny()
    same, _ = resized_backbone(model, cfg.model, cfg.model.img_size)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model.forward_masked(x), same.forward_masked(x)
    assert torch.equal(same.pos_embed, model.pos_embed)
    assert torch.equal(a["patch"], b["patch"]) and torch.equal(a["cls"], b["cls"])


def test_resize_pos_embed__known_linear_grid_is_reproduced() -> None:
    # Channel 0 holds the row index, channel 1 the column index. Cubic convolution reproduces linear functions, so
    # at 2x each new cell centre j maps to old coordinate (j + 0.5) / 2 - 0.5, exactly, wherever the 4-tap kernel
    # stays inside the old grid; the prefix (CLS) slot is copied unchanged.
    n, d = 8, 4
    rows, cols = torch.meshgrid(torch.arange(n, dtype=torch.float32), torch.arange(n, dtype=torch.float32),
                                indexing="ij")
    grid = torch.zeros(n, n, d)
    grid[..., 0], grid[..., 1], grid[..., 2] = rows, cols, 3.0
    pos = torch.cat([torch.full((1, d), 7.0), grid.reshape(n * n, d)])[None]
    out = resize_pos_embed(pos, (n, n), (2 * n, 2 * n))
    assert out.shape == (1, 1 + 4 * n * n, d)
    assert torch.equal(out[0, 0], pos[0, 0])
    new = out[0, 1:].reshape(2 * n, 2 * n, d)
    coord = (torch.arange(2 * n, dtype=torch.float32) + 0.5) / 2 - 0.5
    inner = slice(4, 2 * n - 4)  # taps floor(x)-1 .. floor(x)+2 inside [0, n-1]
    assert torch.allclose(new[inner, inner, 0], coord[inner, None].expand(-1, 2 * n)[:, inner], atol=1e-4)
    assert torch.allclose(new[inner, inner, 1], coord[None, inner].expand(2 * n, -1)[inner], atol=1e-4)
    assert torch.allclose(new[..., 2], torch.full((2 * n, 2 * n), 3.0), atol=1e-5)  # constants everywhere


def test_resize_pos_embed__wrong_table_size_raises() -> None:
    with pytest.raises(ValueError, match="slots"):
        resize_pos_embed(torch.zeros(1, 10, 4), (4, 4), (8, 8))


def test_resized_backbone__runs_at_2x_resolution_and_stays_close_at_1x() -> None:
    model, cfg = _tiny()
    with torch.no_grad():  # a smooth table (as trained ones are), so resampling up and back down loses little
        r, c = torch.meshgrid(torch.linspace(0, 1, 8), torch.linspace(0, 1, 8), indexing="ij")
        freq = torch.linspace(0.5, 2.0, 192)
        model.pos_embed[0, 1:] = (torch.sin(r.reshape(-1, 1) * freq) + torch.cos(c.reshape(-1, 1) * freq)) * 0.5
    big, big_cfg = resized_backbone(model, cfg.model, 2 * cfg.model.img_size)
    assert big_cfg.img_size == 128 and tuple(big.patch_embed.grid_size) == (16, 16)
    assert big.pos_embed.shape == (1, 1 + 256, 192)
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        out = big.forward_masked(x)
        small_ref, small_big = model.forward_masked(x[..., :64, :64]), big.forward_masked(x[..., :64, :64])
    assert out["patch"].shape == (2, 256, 192) and torch.isfinite(out["patch"]).all()
    # at 64 px the 16x16 table is resampled back to 8x8 on the fly: close to the original, not bit-exact
    assert torch.allclose(small_ref["patch"], small_big["patch"], atol=0.05)


def test_highres_train_config__sizes_lr_and_run_length() -> None:
    cfg = load_config("tiny")
    hr = highres_train_config(cfg.train, cfg.highres)
    assert hr.model.img_size == hr.crops.global_size == 128 and hr.crops.local_size == 32
    assert hr.optim.total_steps == cfg.highres.steps and hr.optim.warmup_steps == cfg.highres.warmup_steps
    assert hr.optim.base_lr == cfg.highres.base_lr and hr.model.drop_path == cfg.highres.drop_path
    assert hr.model.embed_dim == cfg.train.model.embed_dim


def test_highres_train_config__size_not_multiple_of_patch_raises() -> None:
    cfg = load_config("tiny")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        highres_train_config(cfg.train, HighresConfig(global_size=100))


@pytest.mark.slow
def test_adapt_highres__pretrained_teacher_adapts_and_runs_at_2x(tiny_pretrained: Path, tiny_cfg: PipelineConfig,
                                                                 shared_data: Path) -> None:
    loaded = load_backbone(tiny_pretrained)
    hr = HighresConfig(global_size=128, local_size=32, steps=1, warmup_steps=1, base_lr=1e-3, drop_path=0.0,
                       batch_size=4)
    data = ParquetImageDataset(shared_data / "tinyimagenet-train.parquet", limit=16)
    train_cfg = tiny_cfg.train.model_copy(update={"loader_workers": 0})
    result = adapt_highres(train_cfg, hr, loaded.backbone, data)
    assert result.trainer.step == 1 and result.train_cfg.model.img_size == 128
    ckpt = torch.load(tiny_pretrained, weights_only=True)
    old_heads = {k[len("dino_head."):]: v for k, v in ckpt["teacher"].items() if k.startswith("dino_head.")}
    new_heads = result.trainer.teacher.dino_head.state_dict()
    assert any(not torch.equal(new_heads[k], old_heads[k]) for k in old_heads if old_heads[k].numel() > 1), \
        "heads were not re-initialised"
    with torch.no_grad():
        out = result.backbone.forward_masked(torch.randn(2, 3, 128, 128))
    assert out["patch"].shape == (2, 256, 192) and torch.isfinite(out["patch"]).all()


def test_adapt_highres__zero_steps_transfers_the_teacher_exactly() -> None:
    model, cfg = _tiny()
    hr = HighresConfig(global_size=128, local_size=32, steps=0, warmup_steps=0, drop_path=0.0)
    result = adapt_highres(cfg, hr, model, dataset=[])
    state, ref = result.backbone.state_dict(), model.state_dict()
    assert all(torch.equal(state[k], ref[k]) for k in ref if k != "pos_embed")
    assert torch.equal(result.backbone.pos_embed[:, 0], model.pos_embed[:, 0])

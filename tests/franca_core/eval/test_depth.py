"""The depth probe: the depth set format, per-patch targets, the ridge probe, and the suite task."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from franca_core.config import load_config
from franca_core.eval.depth import DepthSet, decode_depth, depth_probe
from franca_core.eval.evaluate import synthetic_sets
from franca_core.eval.report import markdown
from franca_core.eval.suite import EvalSuite
from franca_core.models.backbone import build_backbone
from tasks.evaluate import headline


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array.astype(np.float32))
    return buf.getvalue()


def _scenes(path: Path, n: int, size: int = 32, seed: int = 0) -> Path:
    """Images of random-colour blocks whose depth is a known function of the content and the height in the image:
    depth = 1 + 4 * red + 3 * (1 - y / size) metres (a tilted ground plane carrying objects of varied depth).
    Stored in millimetres (``depth_scale`` 0.001), alternately as 16-bit PNG and as .npy."""
    rng = np.random.default_rng(seed)
    images, depths = [], []
    rows = (np.arange(size)[:, None] + 0.5) / size * np.ones((1, size))
    for i in range(n):
        blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = np.kron(blocks, np.ones((size // 4, size // 4, 1), dtype=np.uint8))
        millimetres = 1000 * (1 + 4 * image[..., 0] / 255.0 + 3 * (1 - rows))
        images.append(_png(image))
        depths.append(_npy(millimetres) if i % 2 else _png(np.round(millimetres).astype(np.uint16)))
    table = pa.table({"image": images, "depth": depths}).replace_schema_metadata({"depth_scale": "0.001"})
    pq.write_table(table, path)
    return path


def test_decode_depth__png16_and_npy_scaled_with_missing_values_as_nan() -> None:
    raw = np.array([[0, 1000], [2500, 65535]], dtype=np.uint16)
    depth = decode_depth(_png(raw), scale=0.001)
    assert np.isnan(depth[0, 0]) and depth[0, 1] == pytest.approx(1.0) and depth[1, 1] == pytest.approx(65.535)
    depth = decode_depth(_npy(np.array([[1.5, -1.0], [np.inf, 2.0]])))
    assert depth[0, 0] == 1.5 and np.isnan(depth[0, 1]) and np.isnan(depth[1, 0]) and depth[1, 1] == 2.0
    with pytest.raises(ValueError, match="row 3: not a 16-bit PNG or .npy depth map"):
        decode_depth(b"not a depth map", where="row 3")


def test_depth_set__patch_depth_is_the_mean_of_the_measured_pixels(tmp_path: Path) -> None:
    depth = np.full((16, 16), 2.0, dtype=np.float32)
    depth[:8, 8:] = 0  # patch (0, 1) has no measurement
    depth[8:, :8] = np.tile([1.0, 3.0], (8, 4))  # patch (1, 0): mean 2
    depth[8:, 8:12] = 4.0  # patch (1, 1): half 4, half 2: mean 3
    image = _png(np.zeros((16, 16, 3), dtype=np.uint8))
    pq.write_table(pa.table({"image": [image], "depth": [_npy(depth)]}), tmp_path / "d.parquet")
    got = DepthSet(tmp_path / "d.parquet", patch_size=8).patch_depth(0)
    assert got[0, 0] == 2.0 and torch.isnan(got[0, 1]) and got[1, 0] == 2.0 and got[1, 1] == 3.0


def test_depth_set__bad_input_raises_naming_the_cause(tmp_path: Path) -> None:
    image = _png(np.zeros((16, 16, 3), dtype=np.uint8))
    pq.write_table(pa.table({"image": [image]}), tmp_path / "plain.parquet")
    with pytest.raises(ValueError, match="has no 'depth' column"):
        DepthSet(tmp_path / "plain.parquet", 8)
    pq.write_table(pa.table({"image": [image], "depth": [_npy(np.ones((8, 16)))]}), tmp_path / "small.parquet")
    with pytest.raises(ValueError, match="row 0: the depth map is 16x8 but its image is 16x16"):
        DepthSet(tmp_path / "small.parquet", 8).patch_depth(0)


def test_depth_probe__linear_depth_beats_the_mean_predictor() -> None:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(40, 4, 4, 16, generator=gen)
    depth = torch.exp(0.5 * tokens[..., 0] - 0.3 * tokens[..., 1])  # log depth linear in the tokens
    depth[0, 0, 0] = float("nan")  # an unmeasured patch is left out
    res = depth_probe(tokens[:30], depth[:30], tokens[30:], depth[30:])
    assert res["patches"] == {"train": 30 * 16 - 1, "test": 10 * 16}
    assert res["probe"]["rmse_log"] < 0.05 and res["probe"]["delta1"] == 1.0
    assert res["mean_predictor"]["rmse_log"] > 0.5


def test_eval_suite__depth_probe_on_a_learnable_set_beats_the_mean_predictor(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_backbone(load_config("tiny").train.model, drop_path=0.0).eval()
    path = _scenes(tmp_path / "scenes.parquet", 40)
    cfg = load_config("tiny", ["eval.tasks=[depth]", f"eval.depth={{scenes: {path}}}"])
    report = EvalSuite(model, synthetic_sets(8, n_images=4), cfg.eval, cfg.rasa, rasa_matrix=torch.eye(192),
                       log=lambda s: None).run()
    res = report["results"]["depth"]["scenes"]
    assert res["patches"] == {"train": 20 * 16, "test": 20 * 16}
    for variant in ("raw", "rasa"):
        assert res[variant]["rmse"] < 0.75 * res["mean_predictor"]["rmse"], res
        assert res[variant]["delta1"] > res["mean_predictor"]["delta1"] + 0.2, res
    assert report["sets"]["scenes"]["depth"] is True
    assert {"depth_rmse.scenes.raw", "depth_delta1.scenes.rasa"} <= set(headline(report))
    assert "## Depth probe" in markdown(report)


def test_eval_suite__depth_without_a_depth_set_is_skipped_in_auto_and_raises_by_name() -> None:
    model = build_backbone(load_config("tiny").train.model, drop_path=0.0).eval()
    sets = synthetic_sets(8, n_images=4)
    auto = load_config("tiny").eval
    _, skipped = EvalSuite(model, sets, auto, load_config("tiny").rasa).plan()
    assert skipped["depth"].startswith("needs eval.depth")
    asked = auto.model_copy(update={"tasks": ["depth"]})
    with pytest.raises(ValueError, match="task 'depth' cannot run: it needs eval.depth"):
        EvalSuite(model, sets, asked, load_config("tiny").rasa).plan()

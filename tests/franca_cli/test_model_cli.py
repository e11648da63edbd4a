"""``--model`` end to end through the CLI: ``franca features``, ``franca rasa`` and ``franca eval`` on a DINOv2-layout
checkpoint (random weights, tiny) and a DINOv3-layout one, with images made here (a folder, a Parquet, webdataset
shards)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from webdataset import TarWriter

from franca_cli.main import main
from franca_core.eval.feature_table import square_transform
from franca_core.models.backbone import FrancaViT
from franca_core.models.foreign import TimmBackbone
from franca_core.models.io import load_backbone, load_model_spec
from tests.franca_core.models.test_foreign_layouts import _dinov2_reference, _dinov3_reference

RASA_FAST = ["rasa.rounds=1", "rasa.epochs=1", "rasa.min_steps=5", "rasa.views=1", "rasa.max_images=8"]


def _png(seed: int, size: int = 56) -> bytes:
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 255, 3)
    pixels = np.clip(colour + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("byo")
    _, dinov2, _ = _dinov2_reference(registers=4, swiglu=False)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in dinov2.items()}}, root / "dinov2.pth")
    _, dinov3 = _dinov3_reference(swiglu=False)
    torch.save(dinov3, root / "dinov3.pth")
    folder = root / "images"
    folder.mkdir()
    for i in range(8):
        (folder / f"img{i}.png").write_bytes(_png(i))
    for split, n in (("train", 12), ("test", 8)):
        pq.write_table(pa.table({"image": [_png(100 + i, 32) if i % 2 else _png(200 + i, 32) for i in range(n)],
                                 "label": [i % 2 for i in range(n)]}), root / f"toy-{split}.parquet")
    (root / "shards").mkdir()
    for s in range(2):
        with TarWriter(str(root / "shards" / f"{s:06d}.tar")) as sink:
            for i in range(3):
                sink.write({"__key__": f"s{s}i{i}", "png": _png(300 + 3 * s + i), "txt": "a caption"})
    return {"root": root, "dinov2": root / "dinov2.pth", "dinov3": root / "dinov3.pth", "images": folder,
            "train": root / "toy-train.parquet", "test": root / "toy-test.parquet", "shards": root / "shards"}


def _features(path: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(path)
    return {c: np.stack(table.column(c).to_numpy(zero_copy_only=False)) for c in table.column_names if c != "key"} | {
        "key": np.asarray(table.column("key").to_pylist())}


def test_features_rasa_eval__dinov2_checkpoint_end_to_end(files: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    model = ["--model", str(files["dinov2"]), "--num-heads", "4"]
    # features of an image folder, with every patch token
    assert main(["features", str(files["images"]), *model, "--out", str(tmp_path / "f.parquet"), "--patches",
                 "--batch-size", "3", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 8 and summary["grid"] == [4, 4] and summary["embed_dim"] == 64
    feats = _features(tmp_path / "f.parquet")
    assert feats["cls"].shape == (8, 64) and feats["patch"].shape == (8, 16 * 64)
    net = load_model_spec(files["dinov2"], num_heads=4).network
    with torch.no_grad():
        ref = net.forward_masked(square_transform(56)(Image.open(files["images"] / "img0.png").convert("RGB"))[None])
    row = list(feats["key"]).index("img0")
    assert np.allclose(feats["cls"][row], ref["cls"][0].numpy(), atol=1e-5)
    assert np.allclose(feats["patch_mean"][row], ref["patch"][0].mean(0).numpy(), atol=1e-5)

    # RASA fitted for the DINOv2 backbone, saved in this project's format with its matrix
    out = tmp_path / "dinov2-rasa.safetensors"
    assert main(["rasa", *model, "--images", str(files["images"]), "--out", str(out), *RASA_FAST]) == 0
    fit = json.loads(capsys.readouterr().out)
    assert fit["images"] == 8 and len(fit["rounds"]) == 1
    saved = load_backbone(out)
    assert isinstance(saved.network, FrancaViT) and saved.rasa_matrix is not None
    assert saved.rasa_matrix.shape == (64, 64) and saved.model_cfg.num_registers == 4
    # its features carry the projection on the patch tokens, CLS unchanged
    assert main(["features", str(files["images"]), "--model", str(out), "--out", str(tmp_path / "g.parquet"),
                 "--no-progress"]) == 0
    capsys.readouterr()
    projected = _features(tmp_path / "g.parquet")
    assert np.allclose(projected["cls"], feats["cls"], atol=1e-5)
    assert np.allclose(projected["patch_mean"], feats["patch_mean"] @ saved.rasa_matrix.numpy(), atol=1e-4)

    # eval takes the same spec (and still takes --checkpoint)
    assert main(["eval", "--model", str(out), "--data", f"toy-train={files['train']}", "--data",
                 f"toy-test={files['test']}", "--out", str(tmp_path / "eval"), "--tasks", "knn"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "toy" in report["results"]["knn"] and "baseline" in report
    assert main(["eval", "--checkpoint", str(out), "--model", str(out), "--data", f"toy-train={files['train']}",
                 "--out", str(tmp_path / "eval2")]) == 2
    assert "not both" in capsys.readouterr().err


def test_features_eval__dinov3_checkpoint_from_webdataset_shards(files: dict[str, Path], tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    model = ["--model", str(files["dinov3"]), "--num-heads", "2"]
    assert main(["features", str(files["shards"]), *model, "--out", str(tmp_path / "f.parquet"),
                 "--resolution", "48", "--no-progress", "--workers", "0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 6 and summary["grid"] == [3, 3]
    feats = _features(tmp_path / "f.parquet")
    assert list(feats["key"]) == [f"{s:06d}/s{s}i{i}" for s in range(2) for i in range(3)]
    assert np.isfinite(feats["cls"]).all() and feats["cls"].shape == (6, 64)
    # an image Parquet (the ../shared/data layout): keys are row numbers
    assert main(["features", str(files["test"]), *model, "--out", str(tmp_path / "p.parquet"), "--no-progress",
                 "--limit", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 5
    assert list(_features(tmp_path / "p.parquet")["key"]) == ["0", "1", "2", "3", "4"]
    # a DINOv3 backbone (timm Eva) through the evaluation suite, with its random-init baseline
    assert main(["eval", *model, "--data", f"toy-train={files['train']}", "--data", f"toy-test={files['test']}",
                 "--out", str(tmp_path / "eval"), "--tasks", "knn", "eval.baseline=true"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "toy" in report["results"]["knn"] and "toy" in report["baseline"]["knn"]
    out = tmp_path / "dinov3-rasa.safetensors"
    assert main(["rasa", *model, "--images", str(files["images"]), "--out", str(out), *RASA_FAST]) == 0
    capsys.readouterr()
    assert isinstance(load_backbone(out).network, TimmBackbone)


def test_model_option__bad_specs_exit_2_naming_the_cause(files: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "f.parquet")
    assert main(["features", str(files["images"]), "--model", str(tmp_path / "missing.pth"), "--out", out]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["features", str(files["images"]), "--model", "timm:test_vit", "--out", out]) == 2
    assert "needs a weights file" in capsys.readouterr().err
    assert main(["features", str(tmp_path / "nothing"), "--model", str(files["dinov2"]), "--num-heads", "4",
                 "--out", out]) == 2
    assert "image set not found" in capsys.readouterr().err

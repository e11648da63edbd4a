"""The evaluation suite end to end: generated sets (fast), real sets with the tiny pretrained model (slow), errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from franca_core.config import PipelineConfig, load_config
from franca_core.eval.data import EvalSet
from franca_core.eval.evaluate import evaluate_backbone, open_sets, synthetic_sets
from franca_core.eval.suite import EvalSuite
from franca_core.models.backbone import build_backbone
from franca_core.models.io import load_backbone

SMALL = ["rasa.rounds=3", "rasa.views=1", "rasa.min_steps=40", "rasa.max_images=40", "eval.kmeans_max_tokens=3000",
         "eval.incontext_bank_size=2000", "eval.linear_max_iter=50", "eval.figure_images=2",
         "eval.matryoshka_linear=false", "eval.overcluster_factors=[1, 3]"]


def _random_tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_backbone(load_config("tiny").train.model, drop_path=0.0).eval()


def _png(size: tuple[int, int], mode: str = "RGB", value: int | tuple = 0) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, format="PNG")
    return buf.getvalue()


def test_evaluate_backbone__generated_sets_every_protocol_and_files(tmp_path: Path) -> None:
    cfg = load_config("tiny", SMALL)
    sets = synthetic_sets(patch_size=8, n_images=16)
    report, files, fitted = evaluate_backbone(_random_tiny(), sets, cfg.eval, cfg.rasa, tmp_path, n_levels=5,
                                              fit_rasa_set="synthetic-train", log=lambda s: None)
    res = report["results"]
    assert set(res) == {"knn", "linear", "matryoshka", "overcluster", "incontext", "position", "correspondence"}
    assert report["skipped"]["ood"].startswith("needs eval.ood_in")
    assert report["skipped"]["depth"].startswith("needs eval.depth")
    assert set(res["knn"]["synthetic"]) == {"cls", "patch_mean", "patch_mean_rasa"}
    assert set(res["knn"]["synthetic"]["cls"]) == {10, 20, 100, 200}
    assert res["matryoshka"]["synthetic"]["dims"] == [3, 6, 12, 24, 48, 96, 192]
    assert set(res["overcluster"]["synthetic"]["raw"]) == {"K=9", "K=27"}
    assert all(0 <= v <= 1 for v in res["overcluster"]["synthetic"]["rasa"].values())
    assert fitted is not None and len(report["rasa"]["rounds"]) == 3
    for name in ("json", "markdown", "matryoshka_synthetic_png", "rasa_png", "segmentation_png"):
        assert files[name].is_file() and files[name].stat().st_size > 0, name
    assert json.loads(files["json"].read_text())["model"]["rasa"] is True
    assert "## k-NN top-1" in files["markdown"].read_text()


def test_eval_suite__explicit_task_without_labels_raises_naming_the_set(tmp_path: Path) -> None:
    rows = {"image": [_png((16, 16), value=(i * 20, 0, 0)) for i in range(6)], "label": [-1] * 6,
            "mask": [_png((16, 16), "L", i % 2) for i in range(6)]}
    pq.write_table(pa.table(rows), tmp_path / "seg.parquet")
    cfg = load_config("tiny", ["eval.tasks=[knn]"]).eval
    sets = {"seg-train": EvalSet(tmp_path / "seg.parquet", 8), "seg-test": EvalSet(tmp_path / "seg.parquet", 8)}
    with pytest.raises(ValueError, match=r"task 'knn' cannot run: it needs image-level labels.*'seg-train'"):
        EvalSuite(_random_tiny(), sets, cfg, load_config("tiny").rasa).plan()


def test_eval_suite__unknown_task_and_no_sets_raise() -> None:
    cfg = load_config("tiny").eval
    with pytest.raises(ValueError, match="no evaluation sets"):
        EvalSuite(_random_tiny(), {}, cfg, load_config("tiny").rasa)
    bad = cfg.model_copy(update={"tasks": ["segment"]})
    sets = synthetic_sets(8, n_images=4)
    with pytest.raises(ValueError, match=r"unknown evaluation task\(s\) \['segment'\]"):
        EvalSuite(_random_tiny(), sets, bad, load_config("tiny").rasa)


@pytest.mark.slow
def test_evaluate_backbone__tiny_pretrained_on_pets_camvid_tinyimagenet(tiny_pretrained: Path, shared_data: Path,
                                                                         tiny_cfg: PipelineConfig,
                                                                         tmp_path: Path) -> None:
    limits = "{tinyimagenet-train: 300, tinyimagenet-val: 150, pets-trainval: 60, pets-test: 40, camvid-train: 40, "
    cfg = load_config("tiny", [*SMALL, f"eval.max_images_per_set={limits}camvid-test: 20}}",
                               "eval.ood_in=tinyimagenet", "eval.ood_out=camvid"])
    names = ("tinyimagenet-train", "tinyimagenet-val", "pets-trainval", "pets-test", "camvid-train", "camvid-test")
    loaded = load_backbone(tiny_pretrained)
    sets = open_sets({n: str(shared_data / f"{n}.parquet") for n in names}, 8, cfg.eval)
    report, files, _ = evaluate_backbone(loaded.backbone, sets, cfg.eval, cfg.rasa, tmp_path,
                                         fit_rasa_set="tinyimagenet-train", log=lambda s: None)
    res = report["results"]
    assert set(report["skipped"]) == {"depth"}  # no depth set ships
    assert set(res["knn"]) == {"tinyimagenet", "pets"} and set(res["overcluster"]) == {"pets", "camvid"}
    assert res["overcluster"]["camvid"]["classes"] == 11 and res["overcluster"]["pets"]["classes"] == 2
    assert 0 <= res["incontext"]["camvid"]["rasa"] <= 1 and 0 <= res["ood"]["auroc"] <= 1
    assert res["ood"]["image_size"] == [64, 64]  # camvid queries at the in-distribution geometry
    assert report["timing"]["features_per_s"] > 0
    assert files["segmentation_png"].is_file()

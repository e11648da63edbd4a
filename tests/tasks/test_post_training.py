"""Stages 5-7 through the stage runner: a pretrain-shaped output in, content-addressed outputs out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from franca_core.config import PipelineConfig, load_config
from franca_core.data.synthetic import iter_images
from franca_core.models.backbone import build_backbone
from franca_core.models.io import load_backbone
from tasks.common.digests import sha256_json
from tasks.common.runner import run_stage
from tasks.common.store import StageResult

FAST = ["rasa.rounds=2", "rasa.views=1", "rasa.min_steps=30", "rasa.max_images=24", "highres.steps=1",
        "highres.warmup_steps=1", "highres.batch_size=4", "train.loader_workers=0", "train.crops.n_local=2",
        "data.synthetic.n_images=16", "eval.matryoshka_linear=false", "eval.overcluster_factors=[1]",
        "eval.incontext_bank_size=1000", "eval.kmeans_max_tokens=2000", "eval.figure_images=2"]


def fake_pretrain(cfg: PipelineConfig, folder: Path) -> StageResult:
    """What the pretrain stage publishes: a plain backbone safetensors beside train_config.json."""
    torch.manual_seed(0)
    backbone = build_backbone(cfg.train.model, drop_path=0.0)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(folder / "backbone.safetensors"))
    (folder / "train_config.json").write_text(cfg.train.model_dump_json())
    files = {"backbone": str(folder / "backbone.safetensors"), "train_config": str(folder / "train_config.json")}
    return StageResult(stage="pretrain", uri=str(folder), input_digest="0" * 64, digest=sha256_json(files),
                       files=files)


def image_folder(folder: Path, n: int = 24) -> Path:
    """An ImageFolder of generated images (the sets RASA and high-res train on here)."""
    for i, (img, _, label) in enumerate(iter_images(n, seed=1, size=64)):
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
        img.save(folder / f"c{label}" / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("store")
    images = image_folder(root / "images")
    cfg = load_config("tiny", [f"storage.root={root}", *FAST, f"rasa.dataset={images}", f"highres.dataset={images}"])
    model = fake_pretrain(cfg, root / "pretrained")
    dataset = StageResult(stage="dedup", uri=str(root / "unused"), input_digest="1" * 64, digest="2" * 64)
    return {"cfg": cfg, "model": model, "dataset": dataset, "images": images,
            "rasa": run_stage("rasa", cfg, model=model, dataset=dataset),
            "highres": run_stage("highres", cfg, model=model, dataset=dataset)}


@pytest.mark.slow
def test_fit_rasa__writes_matrix_summary_plot_and_caches(stages: dict) -> None:
    cfg, rasa = stages["cfg"], stages["rasa"]
    assert rasa.uri == f"{cfg.storage.root}/rasa/{rasa.input_digest}"
    assert Path(rasa.uri, "result.json").is_file()
    assert set(rasa.files) == {"rasa", "summary", "plot"} and all(Path(p).is_file() for p in rasa.files.values())
    summary = json.loads(Path(rasa.files["summary"]).read_text())
    assert len(summary["rounds"]) == 2 and summary["chance"] == pytest.approx(0.1071, abs=1e-4)
    again = run_stage("rasa", cfg, model=stages["model"], dataset=stages["dataset"])
    assert again.cached and again.digest == rasa.digest
    other_seed = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"seed": 5})})
    from tasks.rasa import rasa as rasa_stage
    inputs = {"model": stages["model"], "dataset": stages["dataset"]}
    assert rasa_stage.key(other_seed, inputs).digest != rasa_stage.key(cfg, inputs).digest  # eval.seed picks images


@pytest.mark.slow
def test_adapt_highres__backbone_at_the_new_size_loads_back(stages: dict) -> None:
    hr = stages["highres"]
    assert set(hr.files) == {"backbone", "checkpoint", "history"} and hr.stats["steps"] == 1
    loaded = load_backbone(hr.files["backbone"])
    assert loaded.model_cfg.img_size == 128 and loaded.backbone.pos_embed.shape == (1, 257, 192)
    assert load_backbone(hr.files["checkpoint"]).model_cfg.img_size == 128


@pytest.mark.slow
def test_evaluate__report_files_summary_and_mlflow_metrics(stages: dict, tmp_path: Path) -> None:
    import mlflow

    cfg = stages["cfg"]
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        with mlflow.start_run() as run:
            result = run_stage("evaluate", cfg, model=stages["highres"], rasa=stages["rasa"])
        metrics = mlflow.get_run(run.info.run_id).data.metrics
    finally:
        mlflow.set_tracking_uri(previous)
    summary = result.stats["summary"]
    assert "knn_top1.synthetic.patch_mean_rasa" in summary and "overcluster_miou.synthetic.rasa" in summary
    assert all(Path(p).is_file() for p in result.files.values()) and "json" in result.files
    assert "eval.knn_top1.synthetic.cls" in metrics
    assert json.loads(Path(result.files["json"]).read_text())["model"]["rasa"] is True


def test_load_stage_model__output_without_a_model_file_raises(tmp_path: Path) -> None:
    from tasks.common.model_io import load_stage_model

    bogus = StageResult(stage="dedup", uri=str(tmp_path), input_digest="x", digest="y",
                        files={"manifest": str(tmp_path / "manifest.parquet")})
    with pytest.raises(ValueError, match=r"no model file .* it has \['manifest'\]"):
        load_stage_model(bogus, tmp_path)

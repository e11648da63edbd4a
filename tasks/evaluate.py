"""Stage 7: run the evaluation protocols on a model; report, tables and plots, logged to MLflow when a run is active.

Sets: ``eval.datasets`` (named ``<group>-<split>``; each enters the stage's key by its content), else generated
labelled + segmented images of the corpus's style (``data.synthetic.style``). The RASA matrix comes from the rasa
output. With ``eval.baseline`` the same architecture at random init (seeded by ``eval.seed``) is evaluated beside
(``baseline.<metric>`` in the summary). Output ``<root>/evaluate/<key>/``: ``report.json``, ``report.md`` and the PNG
plots; ``stats["summary"]`` holds the headline figures (MLflow-safe keys) the flow puts on its parent run. The
backbone passes run on ``eval.device`` (CUDA where visible; bf16 where native), in a Ray task with ``eval.num_gpus``
GPUs when that is set; the stats give the device, the precision and ``features_per_s``.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from franca_core.config import EvalConfig, PipelineConfig, RasaConfig
from franca_core.eval.data import EvalSet
from franca_core.eval.device import resolve_device
from franca_core.eval.evaluate import evaluate_backbone, open_sets, synthetic_sets
from tasks.common.contract import stage
from tasks.common.model_io import load_stage_model, rasa_matrix_of
from tasks.common.ray_gpu import run_with_gpus
from tasks.common.store import StageResult, Workspace


def headline(report: dict[str, Any]) -> dict[str, float]:
    """Flat ``{metric: value}``: k-NN (k=20), linear, overclustering (K = classes), in-context, OOD, position MSE,
    keypoint correspondence (PCK@0.05 / 0.1) and the depth probe (RMSE, delta1)."""
    res, out = report.get("results", {}), {}
    for group, feats in res.get("knn", {}).items():
        for feat, acc in feats.items():
            out[f"knn_top1.{group}.{feat}"] = acc.get(20, next(iter(acc.values())))
    for group, feats in res.get("linear", {}).items():
        out.update({f"linear_top1.{group}.{feat}": v for feat, v in feats.items()})
    for task in ("overcluster", "incontext"):
        for group, v in res.get(task, {}).items():
            for variant in ("raw", "rasa"):
                if variant in v:
                    val = v[variant]
                    out[f"{task}_miou.{group}.{variant}"] = val.get(f"K={v['classes']}") if isinstance(val, dict) \
                        else val
    for group, v in res.get("position", {}).items():
        out.update({f"position_mse.{group}.{variant}": p["mse"] for variant, p in v.items()})
    if "ood" in res:
        out.update({"ood.auroc": res["ood"]["auroc"], "ood.fpr95": res["ood"]["fpr95"]})
    for task, keys in (("correspondence", {"pck05": "pck@0.05", "pck10": "pck@0.1"}),
                       ("depth", {"depth_rmse": "rmse", "depth_delta1": "delta1"})):
        for group, v in res.get(task, {}).items():
            out.update({f"{name}.{group}.{variant}": v[variant][key] for variant in ("raw", "rasa") if variant in v
                        for name, key in keys.items()})
    for group, row in report.get("matryoshka_retained", {}).items():
        out.update({f"matryoshka_retained.{group}.{k}": row[k] for k in ("knn", "linear") if k in row})
    if "baseline" in report:  # the random-init network's figures under the same names
        retained = {g: row["random_init"] for g, row in report.get("matryoshka_retained", {}).items()
                    if "random_init" in row}
        base = headline({"results": report["baseline"], "matryoshka_retained": retained})
        out.update({f"baseline.{k}": v for k, v in base.items()})
    # MLflow metric names: letters, digits, _ - . / and spaces
    return {re.sub(r"[^\w\-./ ]", "_", k): float(v) for k, v in out.items() if v is not None}


def _log_mlflow(summary: dict[str, float], folder: Path) -> None:
    """Metrics and the report folder, into the active MLflow run (if any)."""
    import mlflow

    if mlflow.active_run() is None:
        return
    mlflow.log_metrics({f"eval.{k}": v for k, v in summary.items()})
    mlflow.log_artifacts(str(folder), artifact_path="evaluation")


def evaluate_on_device(backbone: nn.Module, sets: dict[str, EvalSet], eval_cfg: EvalConfig, rasa_cfg: RasaConfig,
                       n_levels: int, matrix: torch.Tensor | None,
                       baseline: nn.Module | None) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
    """``evaluate_backbone`` with the backbone (and baseline) on ``eval.device``; the report and its files as
    ``{logical name: (file name, bytes)}``, so a Ray GPU task (``eval.num_gpus``) can hand them back."""
    backbone.to(resolve_device(eval_cfg.device))
    with tempfile.TemporaryDirectory() as tmp:
        if not eval_cfg.cache_dir:
            eval_cfg = eval_cfg.model_copy(update={"cache_dir": str(Path(tmp) / "cache")})
        report, files, _ = evaluate_backbone(backbone, sets, eval_cfg, rasa_cfg, Path(tmp) / "report", n_levels,
                                             matrix, baseline=baseline)
        return report, {key: (path.name, path.read_bytes()) for key, path in files.items()}


@stage("evaluate", reads=("eval", "rasa", "train.heads.n_levels", "train.model.img_size", "data.synthetic.n_images",
                          "data.synthetic.style"),
       files=("eval.datasets", "eval.depth"), inputs=("model", "rasa"),
       operational=("eval.cache_dir", "eval.device", "eval.num_gpus"))
def evaluate(cfg: PipelineConfig, ws: Workspace, model: StageResult, rasa: StageResult) -> StageResult:
    """Evaluate ``model`` (pretrain or highres output) with ``rasa``'s matrix; returns the evaluate output."""
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        loaded = load_stage_model(model, local / "in")
        matrix = rasa_matrix_of(rasa, local / "in")
        patch = loaded.model_cfg.patch_size
        sets = (open_sets(cfg.eval.datasets, patch, cfg.eval) if cfg.eval.datasets
                else synthetic_sets(patch, n_images=min(200, cfg.data.synthetic.n_images),
                                    size=cfg.train.model.img_size, style=cfg.data.synthetic.style))
        baseline = loaded.random_init(cfg.eval.seed) if cfg.eval.baseline else None
        report, contents = run_with_gpus(evaluate_on_device, cfg.eval.num_gpus, loaded.network, sets, cfg.eval,
                                         cfg.rasa, cfg.train.heads.n_levels, matrix, baseline)
        (local / "report").mkdir()
        files = {key: local / "report" / name for key, (name, _) in contents.items()}
        for key, (_, data) in contents.items():
            files[key].write_bytes(data)
        summary = headline(report)
        _log_mlflow(summary, local / "report")
        with ws.writing() as out:
            for path in files.values():
                ws.fs.put(str(path), f"{out}/{path.name}")
        out_digest = hashlib.sha256(files["json"].read_bytes()).hexdigest()
    stats = {"summary": summary, "timing": {k: v for k, v in report["timing"].items() if v is not None},
             "skipped": report["skipped"], **report["device"],
             "features_per_s": report["timing"].get("features_per_s")}
    return ws.result(out_digest, {k: p.name for k, p in files.items()}, stats)

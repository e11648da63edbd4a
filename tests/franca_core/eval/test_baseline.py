"""The random-init baseline beside every figure, and the Matryoshka retained ratio (issue 21)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from franca_core.config import load_config
from franca_core.eval.cache import model_digest
from franca_core.eval.evaluate import evaluate_backbone, matryoshka_retained, random_init, synthetic_sets
from franca_core.eval.report import MATRYOSHKA_CLAIM, markdown

SMALL = ["rasa.rounds=2", "rasa.views=1", "rasa.min_steps=30", "rasa.max_images=16", "eval.kmeans_max_tokens=2000",
         "eval.incontext_bank_size=1000", "eval.linear_max_iter=30", "eval.figure_images=2",
         "eval.overcluster_factors=[1]"]


def _paths(tree: Any, prefix: tuple = ()) -> set[tuple]:
    """Every leaf's key path (dict keys only; lists are leaves)."""
    if isinstance(tree, dict):
        return {p for k, v in tree.items() for p in _paths(v, (*prefix, str(k)))}
    return {prefix}


def test_random_init__seeded_same_architecture_new_weights() -> None:
    model_cfg = load_config("tiny").train.model
    a, b, c = random_init(model_cfg, 0), random_init(model_cfg, 0), random_init(model_cfg, 1)
    assert model_digest(a) == model_digest(b) != model_digest(c)
    assert a.embed_dim == 192 and len(a.blocks) == 6 and not a.training


def test_evaluate_backbone__baseline_has_every_metric_of_results_and_the_markdown_shows_both(tmp_path: Path) -> None:
    cfg = load_config("tiny", SMALL)
    model_cfg = cfg.train.model
    trained = random_init(model_cfg, 123)  # stands in for a trained network: other weights, same architecture
    sets = synthetic_sets(patch_size=8, n_images=16, style="textures")
    baseline = random_init(model_cfg, cfg.eval.seed)
    report, files, _ = evaluate_backbone(trained, sets, cfg.eval, cfg.rasa, tmp_path, fit_rasa_set="synthetic-train",
                                         log=lambda s: None, baseline=baseline)
    assert model_digest(baseline) != model_digest(trained)
    assert report["model"]["baseline"]["digest"] != report["model"]["digest"]
    assert report["model"]["baseline"]["rasa"] is True  # its own RASA, fitted the same way
    res, base = report["results"], report["baseline"]
    assert {"knn", "linear", "matryoshka", "overcluster", "incontext", "position"} <= set(res)
    assert _paths(base) == _paths(res)
    assert base["knn"]["synthetic"]["cls"] != res["knn"]["synthetic"]["cls"]
    on_disk = json.loads(files["json"].read_text())
    assert _paths(on_disk["baseline"]) == _paths(on_disk["results"])
    retained = on_disk["matryoshka_retained"]["synthetic"]
    assert retained["d"] == 3 and retained["D"] == 192 and set(retained["random_init"]) == {"knn", "linear"}
    md = files["markdown"].read_text()
    knn20 = res["knn"]["synthetic"]["cls"][20]
    assert f"{100 * knn20:.1f} (random init {100 * base['knn']['synthetic']['cls'][20]:.1f})" in md
    mse = res["position"]["synthetic"]["raw"]["mse"]
    assert f"{mse:.4f} (random init {base['position']['synthetic']['raw']['mse']:.4f}) (chance" in md
    assert MATRYOSHKA_CLAIM in md and "Retained at d=3 of D=192" in md


def test_evaluate_backbone__rasa_from_elsewhere_baseline_has_the_raw_variants_only(tmp_path: Path) -> None:
    cfg = load_config("tiny", [*SMALL, "eval.tasks=[knn, position]"])
    model_cfg = cfg.train.model
    matrix = torch.eye(model_cfg.embed_dim)
    report, files, _ = evaluate_backbone(random_init(model_cfg, 7), synthetic_sets(8, n_images=12), cfg.eval,
                                         cfg.rasa, tmp_path, rasa_matrix=matrix, log=lambda s: None,
                                         baseline=random_init(model_cfg, 0))
    res, base = report["results"], report["baseline"]
    assert set(res["knn"]["synthetic"]) == {"cls", "patch_mean", "patch_mean_rasa"}
    assert set(base["knn"]["synthetic"]) == {"cls", "patch_mean"} and set(base["position"]["synthetic"]) == {"raw"}
    assert report["model"]["baseline"]["rasa"] is False
    md = files["markdown"].read_text()
    assert "without RASA" in md
    rasa_row = next(line for line in md.splitlines() if "patch_mean_rasa" in line)
    assert "random init" not in rasa_row  # no baseline figure to show, and none invented


def test_evaluate_backbone__baseline_off_writes_no_baseline(tmp_path: Path) -> None:
    cfg = load_config("tiny", [*SMALL, "eval.tasks=[knn]", "eval.baseline=false"])
    report, files, _ = evaluate_backbone(random_init(cfg.train.model, 7), synthetic_sets(8, n_images=12), cfg.eval,
                                         cfg.rasa, tmp_path, log=lambda s: None)
    assert "baseline" not in report and "random init" not in files["markdown"].read_text()


def test_matryoshka_retained__ratio_of_the_smallest_to_the_full_dimension() -> None:
    table = {"dims": [3, 6, 12, 192], "knn_k": 20, "knn": {3: 0.3, 6: 0.4, 12: 0.5, 192: 0.6},
             "pca_knn": {3: 0.1, 192: 0.6}, "linear": {"3": 0.2, "6": 0.5, "12": 0.7, "192": 0.8}}
    out = matryoshka_retained({"matryoshka": {"toy": table, "zero": {"dims": [1, 64], "knn": {1: 0.0, 64: 0.0}}}})
    assert out["toy"] == {"d": 3, "D": 192, "knn": pytest.approx(0.5), "linear": pytest.approx(0.25)}
    assert out["zero"] == {"d": 1, "D": 64, "knn": None}
    assert matryoshka_retained({"knn": {}}) == {}


def test_markdown__any_section_shows_the_baseline_beside_its_figures() -> None:
    # a protocol the report does not know gets no baseline of its own; the known ones do, chance stays unpaired
    report = {"model": {"digest": "abc", "baseline": {"seed": 0, "digest": "def", "rasa": False}},
              "results": {"knn": {"g": {"cls": {20: 0.5}}}, "ood": {"in": "a", "out": "b", "k": 10, "auroc": 0.9,
                                                                     "fpr95": 0.25},
                          "position": {"g": {"raw": {"mse": 0.05, "chance": 0.1071}}}},
              "baseline": {"knn": {"g": {"cls": {"20": 0.125}}}, "ood": {"in": "a", "out": "b", "k": 10,
                                                                          "auroc": 0.5, "fpr95": 0.9},
                           "position": {"g": {"raw": {"mse": 0.1, "chance": 0.1071}}}}}
    md = markdown(report)
    assert "| g | cls | 50.0 (random init 12.5) |" in md
    assert "AUROC 90.0 (random init 50.0), FPR@95TPR 25.0 (random init 90.0)" in md
    assert "- g raw: 0.0500 (random init 0.1000) (chance 0.1071)" in md
    assert "seed 0" in md and "without RASA" in md

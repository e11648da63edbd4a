from __future__ import annotations

import math
from pathlib import Path

from franca_core.eval.ablation import ablation_table, markdown_table, query_count
from franca_core.eval.plots import plot_ablation


def _report(knn: float, patch_raw: float, patch_rasa: float, mse_raw: float, mse_rasa: float,
            self_split: bool = False) -> dict:
    pairs = [{"group": "g", "train": "g-train", "test": "g-train" if self_split else "g-val"}]
    return {
        "pairs": pairs, "sets": {"g-train": {"images": 300}, "g-val": {"images": 400}},
        "results": {
            "knn": {"g": {"cls": {10: 0.0, 20: knn}, "patch_mean": {20: patch_raw},
                          "patch_mean_rasa": {20: patch_rasa}}},
            "position": {"g": {"raw": {"mse": mse_raw}, "rasa": {"mse": mse_rasa}}},
            "overcluster": {"g": {"classes": 3, "raw": {"K=3": 0.30}, "rasa": {"K=3": 0.35}}},
        },
    }


def test_query_count__test_set_or_the_test_rows_of_a_self_split() -> None:
    assert query_count(_report(0.5, 0, 0, 0, 0), "g") == 400
    assert query_count(_report(0.5, 0, 0, 0, 0, self_split=True), "g") == 150


def test_ablation_table__rasa_variants_read_rasa_figures_and_accuracies_carry_their_standard_error() -> None:
    report = _report(0.2, 0.1, 0.15, 0.08, 0.11)
    table = ablation_table({"franca": (report, True), "no_rasa": (report, False)})
    f, n = table["franca"], table["no_rasa"]
    assert f["knn_top1.g"]["value"] == n["knn_top1.g"]["value"] == 0.2  # k = 20; CLS: RASA does not act on it
    assert math.isclose(f["knn_top1.g"]["se"], math.sqrt(0.2 * 0.8 / 400))
    assert (f["knn_patch_top1.g"]["value"], n["knn_patch_top1.g"]["value"]) == (0.15, 0.1)
    assert (f["position_mse.g"]["value"], n["position_mse.g"]["value"]) == (0.11, 0.08)
    assert (f["overcluster_miou.g"]["value"], n["overcluster_miou.g"]["value"]) == (0.35, 0.30)


def test_markdown_and_plot__one_row_per_variant_and_a_png(tmp_path: Path) -> None:
    table = ablation_table({"a": (_report(0.2, 0.1, 0.1, 0.1, 0.1), True),
                            "b": (_report(0.3, 0.1, 0.1, 0.1, 0.1), True)})
    md = markdown_table(table, {"a": "first", "b": "second"})
    assert "| a | 20.0 +- 2.0 |" in md and "| b | 30.0 +- 2.3 |" in md and "second" in md
    png = plot_ablation(table, "knn_top1.g", tmp_path / "bar.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_table_metrics__names_mlflow_accepts() -> None:
    from mlflow.utils.validation import _validate_metric_name

    from flows.ablation import table_metrics

    table = {"franca": {"pck@0.05.tinyimagenet": {"value": 0.4}, "knn_top1.tinyimagenet": {"value": 0.1, "se": 0.01}}}
    metrics = table_metrics(table)
    assert metrics == {"ablation.franca.pck_0.05.tinyimagenet": 0.4, "ablation.franca.knn_top1.tinyimagenet": 0.1}
    for name in metrics:
        _validate_metric_name(name)

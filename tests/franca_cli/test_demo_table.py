"""``franca demo``'s metrics fallback: each figure with its random-init value beside it (issue 21)."""

from __future__ import annotations

from franca_cli.demo import DEMO_OVERRIDES, metrics_table


def test_metrics_table__random_init_column_from_the_baseline_metrics() -> None:
    table = metrics_table({"summary.knn_top1.syn.cls": 0.87, "summary.baseline.knn_top1.syn.cls": 0.26,
                           "summary.knn_top1.syn.patch_mean_rasa": 0.29, "summary.baseline.position_mse.syn.raw": 0.1,
                           "eval.knn_top1.syn.cls": 0.87})
    lines = table.splitlines()
    assert lines[0] == "| metric | value | random init |"
    assert "| knn_top1.syn.cls | 0.8700 | 0.2600 |" in lines
    assert "| knn_top1.syn.patch_mean_rasa | 0.2900 | - |" in lines
    assert len(lines) == 4  # the baseline's own rows are not repeated as metrics


def test_demo_overrides__the_corpus_the_demo_learns_from() -> None:
    assert "data.synthetic.style=textures" in DEMO_OVERRIDES

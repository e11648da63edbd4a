"""The ablation comparison: one row per pretraining variant, each figure beside its standard error.

Each variant's evaluation report (``report.json`` of the evaluate stage) gives its figures; a variant evaluated
without RASA reads the ``raw`` patch-level figures, the others the ``rasa`` ones (the CLS token is the same either
way: RASA acts on patch tokens). Accuracies carry the binomial standard error sqrt(p (1 - p) / n) over their n test
queries, so a reader sees which gaps between variants exceed their error; a difference of two independent figures
has a standard error of about sqrt(se_a^2 + se_b^2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from franca_core.eval.splits import row_split

Figure = dict[str, float]


def query_count(report: Mapping[str, Any], group: str, seed: int = 0) -> int:
    """How many test queries a group's figures were measured on (a self-split set: its test rows)."""
    pair = next(p for p in report["pairs"] if p["group"] == group)
    n = int(report["sets"][pair["test"]]["images"])
    return len(row_split(n, seed)[1]) if pair["train"] == pair["test"] else n


def accuracy(value: float, n: int) -> Figure:
    """An accuracy in [0, 1] with its binomial standard error over ``n`` queries."""
    return {"value": float(value), "se": math.sqrt(max(value * (1 - value), 0.0) / n) if n else float("nan"),
            "n": float(n)}


def variant_figures(report: Mapping[str, Any], rasa: bool, seed: int = 0) -> dict[str, Figure]:
    """``{"knn_top1.<group>": {...}, "knn_patch_top1.<group>": ..., "overcluster_miou.<group>": ..., ...}``."""
    res, variant, out = report.get("results", {}), "rasa" if rasa else "raw", {}
    for group, feats in res.get("knn", {}).items():
        n = query_count(report, group, seed)
        out[f"knn_top1.{group}"] = accuracy(_k20(feats["cls"]), n)
        patch = feats.get("patch_mean_rasa") if rasa and "patch_mean_rasa" in feats else feats.get("patch_mean")
        if patch is not None:
            out[f"knn_patch_top1.{group}"] = accuracy(_k20(patch), n)
    for group, feats in res.get("linear", {}).items():
        out[f"linear_top1.{group}"] = accuracy(feats["cls"], query_count(report, group, seed))
    for group, v in res.get("overcluster", {}).items():
        val = v.get(variant, v["raw"])
        out[f"overcluster_miou.{group}"] = {"value": float(val[f"K={v['classes']}"])}
    for group, v in res.get("position", {}).items():
        out[f"position_mse.{group}"] = {"value": float(v.get(variant, v["raw"])["mse"])}
    for group, v in res.get("correspondence", {}).items():
        for name, value in v.get(variant, v.get("raw", {})).items():
            if name.startswith("pck") and isinstance(value, int | float):
                out[f"{name}.{group}"] = {"value": float(value)}
    return out


def _k20(accs: Mapping[Any, float]) -> float:
    """k-NN top-1 at k = 20 (the paper's headline k), else the first k evaluated."""
    for key in (20, "20"):
        if key in accs:
            return float(accs[key])
    return float(next(iter(accs.values())))


def ablation_table(reports: Mapping[str, tuple[Mapping[str, Any], bool]], seed: int = 0) -> dict[str, Any]:
    """``{variant: {metric: figure}}`` from ``{variant: (report, evaluated with RASA)}``, variants in given order."""
    return {name: variant_figures(report, rasa, seed) for name, (report, rasa) in reports.items()}


def markdown_table(table: Mapping[str, Mapping[str, Figure]], notes: Mapping[str, str] | None = None) -> str:
    """One row per variant, one column per metric; accuracies and mIoU in percent with +- one standard error."""
    metrics = list(dict.fromkeys(m for figs in table.values() for m in figs))
    lines = ["| variant | " + " | ".join(metrics) + (" | what changes |" if notes else " |"),
             "|---" * (len(metrics) + 1 + bool(notes)) + "|"]
    for name, figs in table.items():
        cells = [_cell(m, figs.get(m)) for m in metrics]
        lines.append(f"| {name} | " + " | ".join(cells) + (f" | {notes.get(name, '')} |" if notes else " |"))
    return "\n".join(lines) + "\n"


def _cell(metric: str, fig: Figure | None) -> str:
    if fig is None:
        return "-"
    if metric.startswith("position_mse"):
        return f"{fig['value']:.4f}"
    se = f" +- {100 * fig['se']:.1f}" if "se" in fig and not math.isnan(fig["se"]) else ""
    return f"{100 * fig['value']:.1f}{se}"

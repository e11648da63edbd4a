"""Write an evaluation report: ``report.json`` (every figure), ``report.md`` (tables) and the PNG plots.

The JSON is the source of truth (accuracies and mIoU as fractions in [0, 1]); the Markdown shows them in percent.
Where the report has a random-init ``baseline`` (the structure of ``results``), every float of ``results`` reaches
the Markdown as a ``Figure`` carrying its baseline value, which ``_pct`` and any format spec print beside it
("12.5 (random init 3.1)"): a section added later shows its baseline without code of its own.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from franca_core.eval.data import EvalSet
from franca_core.eval.plots import plot_matryoshka, plot_rasa, plot_segmentation

MATRYOSHKA_CLAIM = ("Franca (arXiv 2507.14137, Matryoshka representations): the nested features keep most of the "
                     "full-dimension accuracy down to small dimensions, 1/64 of D included")
_NOT_PAIRED = ("chance",)  # constants of the protocol, the same for any network


class Figure(float):
    """A float of ``results`` with its random-init value (``base``, ``None``: the baseline lacks it)."""

    base: float | None

    def __new__(cls, value: float, base: Any) -> Figure:
        fig = super().__new__(cls, value)
        fig.base = float(base) if isinstance(base, (int, float)) and not isinstance(base, bool) else None
        return fig

    def __format__(self, spec: str) -> str:
        own = float.__format__(self, spec)
        return own if self.base is None else f"{own} (random init {format(self.base, spec)})"


def paired(results: Any, baseline: Any) -> Any:
    """``results`` with every float leaf a ``Figure`` holding the same place's value in ``baseline``."""
    if isinstance(results, dict):
        base = baseline if isinstance(baseline, dict) else {}
        return {k: v if k in _NOT_PAIRED else paired(v, base.get(k, base.get(str(k)))) for k, v in results.items()}
    if isinstance(results, float) and not math.isnan(results):
        return Figure(results, baseline)
    return results


def _pct(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    base = getattr(v, "base", None)
    return f"{100 * float(v):.1f}" + ("" if base is None else f" (random init {_pct(base)})")


def _rows(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _geometry(res: dict[str, Any]) -> list[str]:
    """Keypoint correspondence and depth probe sections (3D awareness); protocol constants (the patch-grid oracle,
    the mean depth predictor) as plain floats, never paired with a baseline."""
    out: list[str] = []
    if res.get("correspondence"):
        out += ["## Keypoint correspondence (PCK, %)", "", "Random homographies of each group's test images; "
                "oracle: the patch centre nearest the true location (the ceiling at this patch grid).", ""]
        rows = []
        for g, v in res["correspondence"].items():
            for name, m in v.items():
                if isinstance(m, dict):
                    own = (lambda x: _pct(float(x))) if name == "oracle" else _pct
                    rows.append([g, name, own(m["pck@0.05"]), own(m["pck@0.1"]), str(v["points"])])
        out += _rows(["set", "features", "PCK@0.05", "PCK@0.1", "points"], rows) + [""]
    if res.get("depth"):
        out += ["## Depth probe", "", "Ridge regression from frozen patch tokens to log patch depth; "
                "RMSE in the depth unit, delta1: share of patches within a factor 1.25.", ""]
        rows = []
        for g, v in res["depth"].items():
            for name, m in v.items():
                if name == "patches":
                    continue
                plain = name == "mean_predictor"
                rows.append([g, name] + [f"{float(m[k]) if plain else m[k]:.4f}" for k in ("rmse", "rmse_log")]
                            + [_pct(float(m["delta1"]) if plain else m["delta1"])])
        out += _rows(["set", "features", "RMSE", "RMSE log", "delta1 (%)"], rows) + [""]
    return out


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (percent)."""
    res, out = report.get("results", {}), ["# Franca evaluation", ""]
    m = report.get("model", {})
    out += [f"Model `{m.get('digest')}`: D={m.get('embed_dim')}, patch {m.get('patch_size')}, "
            f"RASA {'yes' if m.get('rasa') else 'no'}.", ""]
    if "baseline" in report:
        res = paired(res, report["baseline"])
        b = m.get("baseline", {})
        out += [f"Beside each figure: the same architecture at random init (seed {b.get('seed')}, "
                f"`{b.get('digest')}`), evaluated the same way{'' if b.get('rasa') else ', without RASA'}.", ""]
    out += _rows(["set", "images", "size", "labels", "masks"],
                 [[n, str(s["images"]), "x".join(map(str, s["image_size"])), str(s["labels"]), str(s["masks"])]
                  for n, s in report.get("sets", {}).items()]) + [""]
    if "knn" in res:
        out += ["## k-NN top-1 (%)", ""]
        rows = [[g, feat] + [_pct(acc[k]) for k in acc] for g, v in res["knn"].items() for feat, acc in v.items()]
        ks = next(iter(next(iter(res["knn"].values())).values())).keys()
        out += _rows(["set", "features"] + [f"k={k}" for k in ks], rows) + [""]
    if "linear" in res:
        out += ["## Linear probe top-1 (%)", ""]
        out += _rows(["set", "features", "top-1"], [[g, f, _pct(a)] for g, v in res["linear"].items()
                                                     for f, a in v.items()]) + [""]
    for g, t in res.get("matryoshka", {}).items():
        out += [f"## Matryoshka truncation ({g}, top-1 %)", ""]
        keys = [k for k in ("knn", "pca_knn", "linear", "pca_linear") if k in t]
        out += _rows(["d"] + keys, [[str(d)] + [_pct(t[k].get(d, t[k].get(str(d)))) for k in keys]
                                    for d in t["dims"]]) + ["", f"![matryoshka](matryoshka_{g}.png)", ""]
        out += _retained(report.get("matryoshka_retained", {}).get(g))
    for task, title in (("overcluster", "Overclustering mIoU (%)"), ("incontext", "In-context segmentation mIoU (%)"),
                        ("position", "Position probe MSE (chance)")):
        if task in res:
            out += [f"## {title}", ""]
            for g, v in res[task].items():
                for variant, val in v.items():
                    if variant == "classes":
                        continue
                    if isinstance(val, dict) and "mse" in val:
                        out.append(f"- {g} {variant}: {val['mse']:.4f} (chance {val['chance']:.4f})")
                    elif isinstance(val, dict):
                        out.append(f"- {g} {variant}: " + ", ".join(f"{k} {_pct(x)}" for k, x in val.items()))
                    else:
                        out.append(f"- {g} {variant}: {_pct(val)}")
            out.append("")
    if "ood" in res:
        o = res["ood"]
        out += ["## OOD detection", "", f"{o['in']} vs {o['out']} (k={o['k']}): AUROC {_pct(o['auroc'])}, "
                f"FPR@95TPR {_pct(o['fpr95'])}", ""]
    out += _geometry(res)
    if "rasa" in report:
        r = report["rasa"]
        out += ["## RASA", "", f"Position MSE {r['mse_before']:.4f} -> {r['mse_after']:.4f} "
                f"(chance {r['chance']:.4f}, grid {r['grid']})", "", "![rasa](rasa_mse.png)", ""]
        out += _rows(["round", "before", "after"], [[str(x["round"]), f"{x['mse_before']:.4f}",
                                                     f"{x['mse_after']:.4f}"] for x in r["rounds"]]) + [""]
    if report.get("skipped"):
        out += ["## Skipped", ""] + [f"- {t}: {why}" for t, why in report["skipped"].items()] + [""]
    return "\n".join(out)


def _retained(row: dict[str, Any] | None) -> list[str]:
    """The measured D/64-over-D ratios beside the paper's claim (``evaluate.matryoshka_retained``)."""
    if not row:
        return []
    def ratio(r: dict[str, Any], key: str) -> str:
        return "-" if r.get(key) is None else f"{100 * r[key]:.0f} %"
    base = row.get("random_init")
    parts = [f"{key} {ratio(row, key)}" + (f" (random init {ratio(base, key)})" if base else "")
             for key in ("knn", "linear") if key in row]
    return [f"Retained at d={row['d']} of D={row['D']} (accuracy at d over accuracy at D): {', '.join(parts)}.",
            f"Paper's claim: {MATRYOSHKA_CLAIM}.", ""]


def write_report(report: dict[str, Any], out_dir: str | Path, figures: dict[str, Any] | None = None,
                 sets: dict[str, EvalSet] | None = None) -> dict[str, Path]:
    """Write JSON, Markdown and PNGs under ``out_dir``; returns logical name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "report.json", "markdown": out / "report.md"}
    files["json"].write_text(json.dumps(report, indent=1, default=str))
    files["markdown"].write_text(markdown(report))
    res = report.get("results", {})
    for group, table in res.get("matryoshka", {}).items():
        files[f"matryoshka_{group}_png"] = plot_matryoshka(table, out / f"matryoshka_{group}.png",
                                                           f"Matryoshka truncation ({group})")
    if "rasa" in report:
        files["rasa_png"] = plot_rasa(report["rasa"], out / "rasa_mse.png")
    figures = figures or {}
    names = {"overcluster": "overclustering (K = classes)", "incontext": "in-context"}
    preds = {names[k]: figures[k] for k in names if k in figures and len(figures[k])}
    pair = next((p for p in report.get("pairs", []) if p["group"] == figures.get("group")), None)
    # a self-split group's test rows are not its first rows: no figure rather than a mislabelled one
    if preds and sets is not None and pair is not None and pair["train"] != pair["test"]:
        evalset = sets[pair["test"]]
        n = min(len(p) for p in preds.values())
        truth = torch.stack([evalset.mask(i) for i in range(n)])
        files["segmentation_png"] = plot_segmentation(
            [evalset.image(i) for i in range(n)], truth, {k: p[:n] for k, p in preds.items()},
            evalset.n_mask_classes, evalset.ignore_index, out / "segmentation.png")
    return files

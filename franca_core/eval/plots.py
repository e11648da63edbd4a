"""PNG figures of an evaluation report (matplotlib, Agg backend; nothing is shown).

- ``matryoshka.png``: top-1 accuracy vs kept dimension d (log2 axis), z[:d] against PCA-to-d, k-NN and linear;
- ``rasa_mse.png``: RASA held-out position MSE per round, before / after removal, with the chance line;
- ``segmentation.png``: image | ground truth | overclustering (K = classes) | in-context prediction;
- ``ablation_knn.png``: one bar per ablation variant with +- one standard error (``franca_core.eval.ablation``);
- ``loss_curve.png``: a training run's loss terms per step (the pretrain and highres stages' MLflow runs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede the pyplot import
    import matplotlib.pyplot as plt

    return plt


def plot_matryoshka(table: dict[str, Any], path: Path, title: str = "") -> Path:
    """Accuracy vs dimension from a ``matryoshka`` result (``dims``, ``knn``, ``pca_knn``, ``linear``...)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    styles = {"knn": ("C0", "-"), "pca_knn": ("C0", "--"), "linear": ("C1", "-"), "pca_linear": ("C1", "--")}
    for key, (colour, line) in styles.items():
        if key in table:
            dims = sorted(int(d) for d in table[key])
            ax.plot(dims, [100 * table[key][d] if d in table[key] else 100 * table[key][str(d)] for d in dims],
                    color=colour, linestyle=line, marker="o", label=key.replace("_", " ").replace("pca", "PCA"))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("dimension d (z[:d] or PCA-to-d)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title or "Matryoshka truncation")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_rasa(summary: dict[str, Any], path: Path) -> Path:
    """Per-round MSE from ``RasaResult.summary()``."""
    plt = _pyplot()
    rounds = summary["rounds"]
    x = [r["round"] for r in rounds]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(x, [r["mse_before"] for r in rounds], marker="o", label="before removal")
    ax.plot(x, [r["mse_after"] for r in rounds], marker="s", label="after removal")
    ax.axhline(summary["chance"], color="k", linestyle=":", label=f"chance {summary['chance']:.4f}")
    ax.set_xlabel("RASA round")
    ax.set_ylabel("held-out position MSE")
    ax.set_title("RASA: position regression per round")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _colour(labels: torch.Tensor, n_classes: int, ignore_index: int) -> np.ndarray:
    """(gh, gw) class map -> RGB uint8 with a fixed palette; ignored pixels white."""
    palette = (np.asarray(_pyplot().get_cmap("tab20")(np.arange(20))[:, :3]) * 255).astype(np.uint8)
    arr = labels.numpy()
    rgb = palette[np.clip(arr, 0, None) % 20]
    rgb[arr == ignore_index] = 255
    return rgb


def plot_segmentation(images: list[Any], truth: torch.Tensor, preds: dict[str, torch.Tensor], n_classes: int,
                      ignore_index: int, path: Path) -> Path:
    """One row per image: the image, its ground truth, then each named prediction (all (n, gh, gw))."""
    plt = _pyplot()
    cols = 2 + len(preds)
    n = len(images)
    fig, axes = plt.subplots(n, cols, figsize=(2.2 * cols, 2.2 * n), squeeze=False)
    for i in range(n):
        panels = [("image", np.asarray(images[i])), ("ground truth", _colour(truth[i], n_classes, ignore_index))]
        panels += [(name, _colour(p[i], n_classes, ignore_index)) for name, p in preds.items()]
        for ax, (name, img) in zip(axes[i], panels):
            ax.imshow(img)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_ablation(table: Mapping[str, Mapping[str, dict[str, float]]], metric: str, path: str | Path) -> Path:
    """Bar per variant of one metric, with +- one standard error bars where the figure has one."""
    plt = _pyplot()
    names = [n for n in table if metric in table[n]]
    values = [100 * table[n][metric]["value"] for n in names]
    errors = [100 * table[n][metric].get("se", 0.0) for n in names]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.5, 3.6))
    ax.bar(range(len(names)), values, yerr=errors, capsize=4, color=[f"C{i}" for i in range(len(names))])
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title("Ablation at equal compute (+- 1 standard error)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_loss_curve(series: Mapping[str, Sequence[tuple[int, float]]], path: str | Path, title: str = "") -> Path:
    """Training loss terms per step (``{"loss": [(step, value), ...], "dino": ...}``), the total drawn thickest."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, (name, points) in enumerate(series.items()):
        steps, values = zip(*points) if points else ((), ())
        ax.plot(steps, values, color=f"C{i}", linewidth=2.2 if name == "loss" else 1.2, label=name,
                marker="o" if len(points) < 20 else None, markersize=3)
    ax.xaxis.get_major_locator().set_params(integer=True)  # steps, never 2.5
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title or "training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)

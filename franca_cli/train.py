"""``franca train``: plain-loop Franca pretraining on generated images, with a k-NN check and a loss curve.

    franca train --profile tiny --out runs/train train.optim.total_steps=300

Writes ``checkpoint.pt`` (full state, weights_only-loadable), ``metrics.json``, ``loss.png`` under ``--out`` and
prints a JSON summary: loss first/last, k-NN top-1 of the teacher on a held-out generated split against the same
architecture at random init (the student's starting weights). The run is ``franca_core.train.driver.pretrain``
(one process, no Ray, no MLflow) on ``data.synthetic`` images, for ``train.optim.total_steps`` steps or
``train.max_minutes``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import v2

from franca_cli.options import add_config_options, config_from_args
from franca_core.config import PipelineConfig
from franca_core.data.datasets import ImageListDataset
from franca_core.data.multicrop import normalize
from franca_core.data.synthetic import iter_images
from franca_core.eval.features import extract_features
from franca_core.eval.knn import knn_top1
from franca_core.train.driver import initial_backbone, pretrain


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``franca train``."""
    p = sub.add_parser("train", help="plain-loop pretraining on generated images (no Ray, no MLflow)")
    add_config_options(p)
    p.add_argument("--out", default="runs/train", help="output folder")
    p.set_defaults(func=run)


def eval_transform(size: int) -> v2.Compose:
    """Resize to ``size`` and normalise: how the k-NN check reads a backbone out."""
    return v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), normalize()])


def knn_of(backbone: torch.nn.Module, train: ImageListDataset, test: ImageListDataset) -> float:
    """k-NN top-1 (k=20, T=0.07) of ``test`` against ``train`` on the backbone's CLS."""
    a, b = extract_features(backbone, train), extract_features(backbone, test)
    return knn_top1(a["cls"], a["labels"], b["cls"], b["labels"], k=20, temperature=0.07)


def synthetic_split(cfg: PipelineConfig) -> tuple[ImageListDataset, ImageListDataset, ImageListDataset]:
    """``data.synthetic`` images: the pretraining set, and its k-NN bank and held-out queries (a fifth, >= 16)."""
    syn = cfg.data.synthetic
    samples = list(iter_images(syn.n_images, seed=syn.seed, size=syn.image_size, style=syn.style))
    held = max(len(samples) // 5, 16)
    train, test = samples[held:], samples[:held]
    tf = eval_transform(cfg.train.model.img_size)  # the grid the model is built for (globals may train smaller)
    return (ImageListDataset([s[0] for s in train]), ImageListDataset([s[0] for s in train], [s[2] for s in train], tf),
            ImageListDataset([s[0] for s in test], [s[2] for s in test], tf))


def progress_line(m: dict[str, Any], total_steps: int) -> str:
    """One line of the training log: step, loss terms, lr, images/s and the time left."""
    eta = (total_steps - m["step"]) * m["seconds"] / max(m["step"], 1)
    return (f"step {m['step']:>5}/{total_steps}  loss {m['loss']:.4f}  dino {m['dino']:.3f}  "
            f"ibot {m['ibot']:.3f}  koleo {m['koleo']:.3f}  lr {m['lr']:.2e}  {m['images_per_s']:.1f} img/s  "
            f"eta {eta:.0f}s")


def pretrain_on_synthetic(cfg: PipelineConfig, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``cfg.train`` on ``cfg.data.synthetic`` images; returns the summary written to metrics.json."""
    t = cfg.train
    pretraining, bank, queries = synthetic_split(cfg)
    random_top1 = knn_of(initial_backbone(t), bank, queries)
    start = time.perf_counter()
    result = pretrain(t, pretraining, on_log=lambda m: log(progress_line(m, t.optim.total_steps)))
    teacher_top1 = knn_of(result.trainer.teacher.backbone, bank, queries)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = result.save_checkpoint(out / "checkpoint.pt")
    summary = {
        "steps": result.steps, "seconds": round(time.perf_counter() - start, 1),
        "loss_first": result.loss_first, "loss_last": result.loss_last,
        "knn_top1": {"teacher": teacher_top1, "random_init": random_top1},
        "checkpoint": str(ckpt), "history": result.history,
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    plot_loss(result.history, out / "loss.png")
    return summary


def plot_loss(history: list[dict[str, Any]], path: Path) -> None:
    """The loss terms against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [h["step"] for h in history]
    for key in ("loss", "dino", "ibot", "koleo"):
        ax.plot(steps, [h[key] for h in history], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Pretrain, write the outputs, print the summary (without the history) as JSON."""
    cfg = config_from_args(args)
    summary = pretrain_on_synthetic(cfg, Path(args.out), log=lambda s: print(s, file=sys.stderr, flush=True))
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))
    return 0

"""``franca train``: plain-loop Franca pretraining on generated images, with a k-NN check and a loss curve.

    franca train --profile tiny --out runs/train train.optim.total_steps=300

Writes ``checkpoint.pt`` (full state, weights_only-loadable), ``metrics.json``, ``loss.png`` under ``--out`` and
prints a JSON summary: loss first/last, k-NN top-1 of the teacher on a held-out generated split against the same
architecture at random init.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from franca_cli.options import add_config_options, config_from_args
from franca_core.checkpoint import save_checkpoint
from franca_core.config import PipelineConfig
from franca_core.data.collate import MultiCropCollate
from franca_core.data.datasets import ImageListDataset
from franca_core.data.multicrop import MultiCropAugmentation, normalize
from franca_core.data.synthetic import iter_images
from franca_core.eval.features import extract_features
from franca_core.eval.knn import knn_top1
from franca_core.models.backbone import build_backbone
from franca_core.train.loop import run_steps
from franca_core.train.trainer import FrancaTrainer


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="plain-loop pretraining on generated images (no Ray, no MLflow)")
    add_config_options(p)
    p.add_argument("--out", default="runs/train", help="output folder")
    p.set_defaults(func=run)


def eval_transform(size: int) -> v2.Compose:
    return v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), normalize()])


def knn_of(backbone: torch.nn.Module, train: ImageListDataset, test: ImageListDataset) -> float:
    a, b = extract_features(backbone, train), extract_features(backbone, test)
    return knn_top1(a["cls"], a["labels"], b["cls"], b["labels"], k=20, temperature=0.07)


def pretrain_on_synthetic(cfg: PipelineConfig, out: Path, log: Any = print) -> dict[str, Any]:
    """Train ``cfg.train`` on ``cfg.data.synthetic`` images; returns the summary written to metrics.json."""
    t = cfg.train
    torch.manual_seed(t.seed)
    syn = cfg.data.synthetic
    samples = list(iter_images(syn.n_images, seed=syn.seed, size=syn.image_size, style=syn.style))
    held = max(len(samples) // 5, 16)
    train_imgs, test = samples[held:], samples[:held]
    size = t.model.img_size  # the grid the model is built for (globals may train smaller)
    eval_train = ImageListDataset([s[0] for s in train_imgs], [s[2] for s in train_imgs], eval_transform(size))
    eval_test = ImageListDataset([s[0] for s in test], [s[2] for s in test], eval_transform(size))
    collate = MultiCropCollate(t.masking, t.model.patch_size)
    loader = DataLoader(
        ImageListDataset([s[0] for s in train_imgs], transform=MultiCropAugmentation(t.crops)),
        batch_size=t.optim.batch_size, shuffle=True, drop_last=True, num_workers=t.loader_workers,
        persistent_workers=t.loader_workers > 0, collate_fn=lambda xs: collate([x for x, _ in xs]),
    )
    random_top1 = knn_of(build_backbone(t.model, drop_path=0.0), eval_train, eval_test)
    trainer = FrancaTrainer(t)
    start = time.perf_counter()

    def on_log(m: dict[str, Any]) -> None:
        eta = (t.optim.total_steps - m["step"]) * m["seconds"] / max(m["step"], 1)
        log(f"step {m['step']:>5}/{t.optim.total_steps}  loss {m['loss']:.4f}  dino {m['dino']:.3f}  "
            f"ibot {m['ibot']:.3f}  koleo {m['koleo']:.3f}  lr {m['lr']:.2e}  {m['images_per_s']:.1f} img/s  "
            f"eta {eta:.0f}s")

    history = run_steps(trainer, loader, t.optim.total_steps, on_log, t.log_every,
                        max_seconds=t.max_minutes * 60 if t.max_minutes else None)
    teacher_top1 = knn_of(trainer.teacher.backbone, eval_train, eval_test)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = save_checkpoint(trainer.state_dict(), out / "checkpoint.pt")
    summary = {
        "steps": trainer.step, "seconds": round(time.perf_counter() - start, 1),
        "loss_first": history[0]["loss"] if history else None, "loss_last": history[-1]["loss"] if history else None,
        "knn_top1": {"teacher": teacher_top1, "random_init": random_top1},
        "checkpoint": str(ckpt), "history": history,
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    plot_loss(history, out / "loss.png")
    return summary


def plot_loss(history: list[dict[str, Any]], path: Path) -> None:
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
    cfg = config_from_args(args)
    summary = pretrain_on_synthetic(cfg, Path(args.out), log=lambda s: print(s, file=sys.stderr, flush=True))
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))
    return 0

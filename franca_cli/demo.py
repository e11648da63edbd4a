"""``franca demo``: the embedded default job, offline, CPU only (what ``make demo`` runs).

For now: a short tiny-profile pretraining run on generated images with its loss curve and a k-NN check against
random init; it grows into the full Prefect pipeline as stages land.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from franca_cli.options import add_config_options, config_from_args
from franca_cli.train import pretrain_on_synthetic


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the embedded default job (tiny profile, generated data, CPU)")
    add_config_options(p)
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    out = Path(args.out)
    summary = pretrain_on_synthetic(cfg, out, log=lambda s: print(s, file=sys.stderr, flush=True))
    knn = summary["knn_top1"]
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))
    print(f"\nloss {summary['loss_first']:.3f} -> {summary['loss_last']:.3f}; k-NN top-1 on held-out images: "
          f"teacher {knn['teacher']:.3f} vs random init {knn['random_init']:.3f}\n"
          f"loss curve: {out / 'loss.png'}  checkpoint: {summary['checkpoint']}")
    return 0

"""``franca eval``: evaluate any Franca checkpoint on any labelled image sets, with every protocol they allow.

    franca eval --checkpoint runs/train/checkpoint.pt \\
        --data tinyimagenet-train=../shared/data/tinyimagenet-train.parquet \\
        --data tinyimagenet-val=../shared/data/tinyimagenet-val.parquet \\
        --data pets-trainval=../shared/data/pets-trainval.parquet --data pets-test=../shared/data/pets-test.parquet \\
        --fit-rasa tinyimagenet-train --out runs/eval eval.max_images=2000 eval.ood_in=tinyimagenet eval.ood_out=pets

The checkpoint is a training checkpoint (its teacher backbone is evaluated) or an exported ``.safetensors``
backbone (with its RASA matrix, if it has one); the architecture is read from the file. ``--model SPEC`` takes any
backbone instead: also ``models:/NAME@ALIAS``, ``s3://`` files, DINOv2 / Franca / DINOv3 checkpoints in their
original layout and ``timm:MODEL_NAME:WEIGHTS`` (``franca_cli/model_option.py``). Sets are Parquet files in
the ``../shared/data`` layout or ImageFolder trees, named ``<group>-<split>`` so train and test splits pair up
(``franca_core/eval/splits.py``). Writes ``report.json``, ``report.md`` and PNG plots under ``--out`` and prints
the results as JSON. Bad input (no labels for a task that needs them, masks of the wrong size, an empty set, a
checkpoint of another architecture with ``--expect-profile``) exits with status 2 and one line naming the cause.
Every figure has a random-init baseline beside it (the checkpoint's architecture, seeded by ``eval.seed``, through
the same protocols; its own RASA with ``--fit-rasa``, none otherwise); ``eval.baseline=false`` skips it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from franca_cli.model_option import SPECS, add_model_options, load_from_args
from franca_cli.options import add_config_options, config_from_args
from franca_core.config import ConfigError, load_config
from franca_core.eval.evaluate import evaluate_backbone, open_sets


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``eval`` to the ``franca`` command."""
    p = sub.add_parser("eval", help="evaluate a checkpoint on labelled image sets (k-NN, linear, segmentation, ...)")
    add_config_options(p)
    p.add_argument("--checkpoint", default=None, help="training checkpoint (.pt) or exported backbone (.safetensors)")
    add_model_options(p, required=False)
    p.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                   help="an evaluation set (repeatable); also eval.datasets in the config")
    p.add_argument("--out", default="runs/eval", help="output folder for report.json, report.md and plots")
    p.add_argument("--tasks", default=None, help="comma-separated subset of knn,linear,matryoshka,overcluster,"
                                                 "incontext,position,ood (default: every task the data allows)")
    p.add_argument("--fit-rasa", default=None, metavar="NAME", help="fit RASA on this set before evaluating")
    p.add_argument("--no-rasa", action="store_true", help="ignore a RASA matrix stored with the checkpoint")
    p.add_argument("--expect-profile", default=None, metavar="PROFILE",
                   help="fail unless the checkpoint has this profile's architecture (tiny, vitb14, ...)")
    p.set_defaults(func=run)


def parse_data(items: list[str]) -> dict[str, str]:
    """``["a=path", ...]`` -> ``{"a": "path"}``; a malformed item raises ConfigError naming it."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--data {item!r} is not of the form NAME=PATH")
        out[name] = path
    return out


def run(args: argparse.Namespace) -> int:
    """Load, evaluate, write, print; input errors exit 2 with one line."""
    cfg = config_from_args(args)
    eval_cfg = cfg.eval
    if args.tasks:
        eval_cfg = eval_cfg.model_copy(update={"tasks": [t.strip() for t in args.tasks.split(",") if t.strip()]})
    paths = {**eval_cfg.datasets, **parse_data(args.data)}
    try:
        expected = load_config(args.expect_profile).train.model if args.expect_profile else None
        if (args.checkpoint is None) == (args.model is None):
            raise ValueError(f"name the backbone with --checkpoint FILE or --model SPEC ({SPECS}), not both")
        args.model = args.model or args.checkpoint
        loaded = load_from_args(args, expected=expected)
        if not paths:
            raise ValueError("no evaluation sets: pass --data NAME=PATH (or set eval.datasets)")
        sets = open_sets(paths, loaded.model_cfg.patch_size, eval_cfg)
        n_levels = (loaded.train_config or {}).get("heads", {}).get("n_levels", cfg.train.heads.n_levels)
        report, files, _ = evaluate_backbone(
            loaded.network, sets, eval_cfg, cfg.rasa, Path(args.out), n_levels=n_levels,
            rasa_matrix=None if args.no_rasa else loaded.rasa_matrix, fit_rasa_set=args.fit_rasa,
            log=lambda s: print(s, file=sys.stderr, flush=True),
            baseline=loaded.random_init(eval_cfg.seed) if eval_cfg.baseline else None)
    except (ValueError, FileNotFoundError) as exc:
        print(f"franca eval: error: {exc}", file=sys.stderr)
        return 2
    extra = {k: report[k] for k in ("baseline", "matryoshka_retained", "rasa") if k in report}
    print(json.dumps({"results": report["results"], "skipped": report["skipped"], "timing": report["timing"], **extra,
                      "files": {k: str(v) for k, v in files.items()}}, indent=1, default=str))
    return 0

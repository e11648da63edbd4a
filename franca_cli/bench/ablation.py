"""``franca bench ablation``: the ablation flow on Tiny-ImageNet; which of Franca's ideas help, as JSON.

    franca bench ablation                                  # 5 variants, 300 steps each (~1 h on 2 cores)
    franca bench ablation --steps 600 --variants franca,centering

Runs ``flows/ablation.py`` in this process on a fresh storage root: the data stages take ``--images`` images of
``../shared/data/tinyimagenet-train`` through source, select, download (img2dataset over HTTP on 127.0.0.1) and dedup
(no decontamination: the k-NN bank is drawn from the same set, as in the paper's k-NN protocol); then each variant
pretrains the tiny profile for ``--steps`` steps of 32 images (equal compute), RASA is fitted on its model, and
k-NN top-1 (k = 20, T = 0.07, L2-normalised features) is measured with a bank of ``--bank`` tinyimagenet-train images
and ``--queries`` tinyimagenet-val images, besides the position probe. Prints ``variants``: name -> figure -> value
and binomial standard error (``se``), so a reader can see which differences exceed their error.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from franca_cli.bench.datasets import DATA
from franca_cli.options import add_config_options

HELP = "pretraining variants at equal compute on Tiny-ImageNet, k-NN with standard errors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The config options and the budget."""
    add_config_options(parser)
    parser.add_argument("--steps", type=int, default=300, help="pretraining steps per variant (batch 32)")
    parser.add_argument("--images", type=int, default=20_000, help="tinyimagenet-train images to pretrain on")
    parser.add_argument("--bank", type=int, default=10_000, help="k-NN bank: tinyimagenet-train images")
    parser.add_argument("--queries", type=int, default=2_000, help="k-NN queries: tinyimagenet-val images")
    parser.add_argument("--variants", default=None, help="comma-separated subset of the flow's variants")
    parser.add_argument("--storage", default=None, help="storage root (default: a fresh temporary folder)")


def overrides(args: argparse.Namespace) -> list[str]:
    """The flow's config overrides for this budget (the user's own overrides come last and win)."""
    train, val = DATA / "tinyimagenet-train.parquet", DATA / "tinyimagenet-val.parquet"
    return [
        f"data.source={train}", f"data.select.target_count={args.images}", "data.download.long_side=64",
        "dedup.include_eval_datasets=false",
        f"train.optim.total_steps={args.steps}",
        f"eval.datasets={{tinyimagenet-train: {train}, tinyimagenet-val: {val}}}",
        f"eval.max_images_per_set={{tinyimagenet-train: {args.bank}, tinyimagenet-val: {args.queries}}}",
        "eval.tasks=[knn,position]", "rasa.max_images=1000",
        f"storage.root={args.storage or tempfile.mkdtemp(prefix='franca-ablation-')}",
        *args.overrides,
    ]


def run(args: argparse.Namespace) -> int:
    """Run the ablation flow and print its table with the budget (JSON)."""
    missing = [s for s in ("tinyimagenet-train", "tinyimagenet-val") if not (DATA / f"{s}.parquet").exists()]
    if missing:
        raise SystemExit(f"franca bench ablation: {missing} not found under {DATA} (../shared/data)")
    from infra.offline import apply_offline_env

    apply_offline_env()
    from flows.ablation import ablation

    t0 = time.perf_counter()
    variants = args.variants.split(",") if args.variants else None
    out = ablation(profile=args.config or args.profile, overrides=overrides(args), variants=variants)
    print(json.dumps({
        "budget": {"steps_per_variant": args.steps, "batch_size": "profile (tiny: 32)", "pretrain_images": args.images,
                   "knn_bank": args.bank, "knn_queries": args.queries, "knn_k": 20},
        "variants": out["variants"], "notes": out["notes"], "mlflow_run_id": out["mlflow_run_id"],
        "wall_s": round(time.perf_counter() - t0, 1)}, indent=1))
    return 0

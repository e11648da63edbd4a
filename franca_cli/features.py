"""``franca features``: CLS and mean-patch features (optionally every patch token) of an image source, as Parquet.

    franca features ../shared/data/pets-test.parquet --model models:/franca-tiny@candidate --out pets.parquet
    franca features photos/ --model dinov2_vits14_pretrain.pth --out photos.parquet --patches
    franca features 'shards/{000000..000009}.tar' --model timm:vit_small_patch14_dinov2:w.safetensors --out f.parquet

IMAGES is an image folder (recursive), a Parquet file with an ``image`` column, or webdataset shards (a ``.tar``, a
folder of them or a brace pattern). Images are centre-cropped squares at ``--resolution`` (default: the model's
size); patch tokens carry the model's RASA projection unless ``--no-rasa``. Columns and metadata:
``franca_core.eval.feature_table``. A progress bar (tqdm) goes to stderr; a JSON summary to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from franca_cli.model_option import add_model_options, load_from_args
from franca_core.data.image_source import count_images, iter_images
from franca_core.eval.feature_table import write_feature_table


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``features`` to the ``franca`` command."""
    p = sub.add_parser("features", help="extract CLS / patch features of images with any backbone to Parquet")
    p.add_argument("images", metavar="IMAGES", help="image folder, image Parquet or webdataset shards")
    add_model_options(p)
    p.add_argument("--out", required=True, help="the Parquet file to write")
    p.add_argument("--resolution", type=int, default=None, help="square side in pixels (default: the model's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="at most this many images")
    p.add_argument("--patches", action="store_true", help="also write every patch token (float16)")
    p.add_argument("--no-rasa", action="store_true", help="ignore a RASA matrix stored with the model")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="threads decoding and resizing images (0: in the main thread)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load, extract, write; bad input exits 2 with one line naming the cause."""
    import torch

    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be positive (got {args.batch_size})")
        loaded = load_from_args(args)
        device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
        model = loaded.model(with_rasa=not args.no_rasa).to(device)
        total = count_images(args.images)
        bar = None
        if not args.no_progress:
            try:
                from tqdm import tqdm  # type: ignore[import-untyped]
            except ImportError:  # optional: no bar without it
                tqdm = None
            if tqdm is not None:
                bar = tqdm(total=min(total, args.limit) if total and args.limit else total, unit="img",
                           desc="features", file=sys.stderr)
        try:
            summary = write_feature_table(
                model, iter_images(args.images, args.limit), args.out, args.resolution or loaded.model_cfg.img_size,
                loaded.model_cfg.patch_size, args.batch_size, args.patches,
                metadata={"model": loaded.source, "layout": loaded.layout,
                          "rasa": str(loaded.rasa_matrix is not None and not args.no_rasa).lower()},
                progress=bar.update if bar is not None else None, workers=max(0, args.workers))
        finally:
            if bar is not None:
                bar.close()
    except (ValueError, FileNotFoundError) as exc:
        print(f"franca features: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0

"""``franca rasa``: fit RASA for any backbone on your images and save backbone + RASA in this project's format.

    franca rasa --model dinov3_vits16_pretrain.pth --images photos/ --out dinov3-rasa.safetensors rasa.max_images=500

RASA (``franca_core.rasa``, FRANCA_METHOD.md "RASA") removes the absolute-position directions from the frozen patch
tokens; it is fitted on the raw backbone (a RASA matrix already stored with the model is replaced). IMAGES is an
image folder, an image Parquet or webdataset shards (``franca_core.data.image_source``); the first
``rasa.max_images`` are used, as centre-cropped squares at ``rasa.resolution`` (default: the model's size). The
output is a ``.safetensors`` backbone with ``rasa.matrix`` that every ``--model`` reads (``franca eval``,
``franca features``); the fit's per-round MSE is printed as JSON and stored in the file's metadata.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from franca_cli.model_option import add_model_options, load_from_args
from franca_cli.options import add_config_options, config_from_args
from franca_core.data.image_source import iter_images
from franca_core.eval.data import EvalSet
from franca_core.eval.position_probe import fit_rasa_on
from franca_core.models.io import save_backbone


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``rasa`` to the ``franca`` command."""
    p = sub.add_parser("rasa", help="fit RASA for any backbone on images; save backbone + RASA (.safetensors)")
    add_config_options(p)
    add_model_options(p)
    p.add_argument("--images", required=True, help="image folder, image Parquet or webdataset shards")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--batch-size", type=int, default=None, help="backbone batch size (default: eval.batch_size)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load, fit, save, print; bad input exits 2 with one line naming the cause."""
    cfg = config_from_args(args)
    r = cfg.rasa
    try:
        if not str(args.out).endswith(".safetensors"):
            raise ValueError(f"--out {args.out} must be a .safetensors file")
        loaded = load_from_args(args)
        images = [blob for _, blob in iter_images(args.images, r.max_images)]
        if len(images) < 2:
            raise ValueError(f"{args.images} holds {len(images)} image(s); RASA needs at least 2 (fit + held out)")
        side = r.resolution or loaded.model_cfg.img_size
        fit_set = EvalSet.from_records("rasa-fit", images, loaded.model_cfg.patch_size, resolution=side, square=True)
        start = time.perf_counter()
        result = fit_rasa_on(loaded.network, fit_set, r, args.batch_size or cfg.eval.batch_size, cfg.train.seed)
        summary = {**result.summary(), "images": len(images), "resolution": fit_set.image_size[0],
                   "seconds": round(time.perf_counter() - start, 2), "model": loaded.source}
        out = save_backbone(loaded.network, loaded.model_cfg, args.out, rasa_matrix=result.matrix,
                            metadata={"rasa_summary": json.dumps(summary), "source": loaded.source,
                                      "layout": loaded.layout}, train_config=loaded.train_config)
    except (ValueError, FileNotFoundError) as exc:
        print(f"franca rasa: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({**summary, "out": str(out)}, indent=1))
    return 0

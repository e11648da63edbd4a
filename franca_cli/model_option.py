"""``--model SPEC``: the one way every ``franca`` command names a backbone (``tasks.common.model_io.load_model``).

Accepted: this project's checkpoints (``.pt``) and backbones (``.safetensors``); ``models:/<name>@<alias>`` or
``models:/<name>/<version>`` of the MLflow Model Registry (``MLFLOW_TRACKING_URI``); local and ``s3://`` files;
DINOv2 / Franca / DINOv3 checkpoints in their original key layout; ``timm:<model name>:<weights file>``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from franca_core.config import ModelConfig
from franca_core.models.io import LoadedBackbone

SPECS = ("a checkpoint (.pt) or backbone (.safetensors) of this project, models:/NAME@ALIAS or models:/NAME/VERSION, "
         "a local or s3:// file in the DINOv2 / Franca / DINOv3 key layout, or timm:MODEL_NAME:WEIGHTS")


def add_model_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--model`` and ``--num-heads`` (heads are not in the weights; the default is embed_dim / 64)."""
    parser.add_argument("--model", required=required, metavar="SPEC", help=f"the backbone: {SPECS}")
    parser.add_argument("--num-heads", type=int, default=None, metavar="N",
                        help="attention heads of a DINOv2/Franca/DINOv3 file (default: embed_dim / 64)")


def load_from_args(args: argparse.Namespace, expected: ModelConfig | None = None) -> LoadedBackbone:
    """The backbone ``--model`` names (remote files are copied to a temporary folder, removed after loading)."""
    from tasks.common.model_io import load_model

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stdout carries the JSON summary
    with tempfile.TemporaryDirectory(prefix="franca-model-") as tmp:
        return load_model(args.model, Path(tmp), num_heads=args.num_heads, expected=expected)

"""``franca export``: the model for use outside this project, as timm weights + config or as an ONNX graph.

    franca export models:/franca-tiny@candidate --format onnx runs/export/franca-tiny.onnx
    franca export runs/train/checkpoint.pt --format timm runs/export/timm/

MODEL is a registered model (``models:/<name>@<alias>`` or ``models:/<name>/<version>``, from ``--tracking-uri``,
else ``MLFLOW_TRACKING_URI``), or any model spec ``--model`` takes elsewhere (``tasks.common.model_io.load_model``:
this project's checkpoints, local or s3:// files, DINOv2 / Franca / DINOv3 layouts, ``timm:<name>:<weights>``).

``timm`` writes ``model.safetensors`` + ``config.json`` (+ ``rasa.safetensors``) into the folder OUT:
``timm.create_model(config["architecture"], pretrained=False, **config["kwargs"])`` then ``load_state_dict``.
``onnx`` writes the graph (images (B, 3, S, S) ImageNet-normalised -> ``cls``, ``patch`` with RASA) to OUT
(``model.onnx`` inside OUT when it does not end in ``.onnx``). Both exports are checked against the torch features
on a seeded batch; the maximum absolute difference is printed in the JSON summary. A model that cannot be read
exits with status 2 and one line naming the cause.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from franca_core import export
from franca_core.models import io


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` to the ``franca`` command."""
    p = sub.add_parser("export", help="export a model as timm weights + config or as ONNX (checked)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="models:/NAME@ALIAS, models:/NAME/VERSION or a weights file")
    p.add_argument("out", metavar="OUT", help="output folder (timm) or .onnx file (onnx)")
    p.add_argument("--format", required=True, choices=export.FORMATS)
    p.add_argument("--img-size", type=int, default=None, help="ONNX input size (default: the model's img_size)")
    p.add_argument("--no-rasa", action="store_true", help="leave the RASA matrix out of the ONNX graph")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for models:/ (else MLFLOW_TRACKING_URI)")
    p.add_argument("--num-heads", type=int, default=None,
                   help="attention heads of a DINOv2/Franca/DINOv3 file whose head count is not D/64")
    p.set_defaults(func=run)


def load_model(spec: str, tracking_uri: str | None, folder: Path, num_heads: int | None = None
               ) -> io.LoadedBackbone:
    """The backbone (+ RASA) a MODEL argument names; ``models:/`` URIs and remote files are fetched into ``folder``."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stdout is the JSON summary
    from tasks.common import model_io

    universal = getattr(model_io, "load_model", None)  # every --model form (registry, s3://, foreign layouts)
    if universal is not None:
        return universal(spec, folder, num_heads=num_heads, tracking_uri=tracking_uri)
    if spec.startswith("models:/"):
        import mlflow

        from tasks.common.pyfunc_model import weights_file

        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=spec, dst_path=str(folder),
                                                       tracking_uri=tracking_uri)
        except mlflow.exceptions.MlflowException as exc:
            raise ValueError(f"{spec} cannot be read from {mlflow.get_tracking_uri()}: {exc.message}") from None
        return io.load_backbone(weights_file(local))
    return io.load_backbone(spec)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    summary: dict[str, Any] = {"model": args.model, "format": args.format}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            loaded = load_model(args.model, args.tracking_uri, Path(tmp), args.num_heads)
            if args.format == "timm":
                files = export.export_timm(loaded, out)
                summary["max_abs_diff"] = timm_difference(loaded, out)
            else:
                target = out if out.suffix == ".onnx" else out / "model.onnx"
                files = {"onnx": export.export_onnx(loaded, target, args.img_size, with_rasa=not args.no_rasa)}
                size = args.img_size or loaded.model_cfg.img_size
                images = export.example_images(loaded.model_cfg.model_copy(update={"img_size": size}), batch=2)
                summary["max_abs_diff"] = export.check_onnx(files["onnx"], loaded, images, not args.no_rasa)["max"]
        except (FileNotFoundError, ValueError) as exc:
            print(f"franca export: {exc}", file=sys.stderr)
            return 2
    summary["files"] = {k: str(v) for k, v in files.items()}
    print(json.dumps(summary, indent=1))
    return 0


def timm_difference(loaded: io.LoadedBackbone, folder: Path) -> float:
    """Largest |difference| between the exported timm model (+ RASA) and our features on a seeded batch."""
    model, config, rasa = export.load_timm(folder)
    images = export.example_images(loaded.model_cfg, batch=2)
    with torch.no_grad():
        tokens = model.forward_features(images)  # type: ignore[operator]  # nn.Module attribute
        cls, patch = export.feature_model(loaded)(images)
    timm_patch = tokens[:, config["num_prefix_tokens"]:]
    timm_patch = timm_patch @ rasa if rasa is not None else timm_patch
    return float(max((tokens[:, 0] - cls).abs().max(), (timm_patch - patch).abs().max()))

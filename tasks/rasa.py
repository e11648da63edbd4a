"""Stage 5: fit RASA on the frozen patch tokens of the pretrained teacher; the (D, D) matrix ships with the model.

Images: ``rasa.dataset`` (Parquet or ImageFolder) when set (a deterministic subset drawn with ``eval.seed``), else the
first ``rasa.max_images`` kept images of the dedup output's shards (square crops at the model's size). Output
``<root>/rasa/<key>/``: ``rasa.safetensors``
(``rasa.matrix`` (D, D), ``rasa.directions`` (2 * rounds, D)), ``summary.json`` (per-round MSE) and
``rasa_mse.png``. The backbone passes run on ``eval.device`` (CUDA where visible; bf16 where native), in a Ray task
with ``eval.num_gpus`` GPUs when that is set; the stats give the device, the precision and ``features_per_s``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from franca_core.config import PipelineConfig, RasaConfig
from franca_core.eval.data import EvalSet
from franca_core.eval.device import inference_precision, resolve_device
from franca_core.eval.plots import plot_rasa
from franca_core.eval.position_probe import augmented_tokens, fit_rasa_tokens
from franca_core.rasa import RasaResult
from tasks.common.contract import stage
from tasks.common.model_io import load_stage_model, shard_images
from tasks.common.ray_gpu import run_with_gpus
from tasks.common.store import StageResult, Workspace


def rasa_images(cfg: PipelineConfig, dataset: StageResult, patch_size: int) -> EvalSet:
    """The images RASA is fitted on (see the module docstring for the order of preference)."""
    r = cfg.rasa
    if r.dataset:
        return EvalSet(r.dataset, patch_size, r.resolution, r.max_images, cfg.eval.seed, name="rasa-fit")
    images = shard_images(dataset, r.max_images)
    if not images:
        raise ValueError(f"the dedup output {dataset.uri} has no kept images to fit RASA on")
    return EvalSet.from_records("rasa-fit", images, patch_size, resolution=r.resolution or cfg.train.model.img_size,
                                square=True)


def fit_rasa_on_device(backbone: nn.Module, images: EvalSet, rasa_cfg: RasaConfig, batch_size: int, seed: int,
                       device: str) -> tuple[RasaResult, dict[str, Any]]:
    """``fit_rasa_on`` with the backbone passes on ``device`` (``eval.device``); also the device, the precision and
    the token extraction's ``features_per_s`` (augmented views per second). Runs in a Ray GPU task with
    ``eval.num_gpus``."""
    on = resolve_device(device)
    backbone.to(on)
    start = time.perf_counter()
    tokens = augmented_tokens(backbone, images, rasa_cfg.views, batch_size, seed, limit=rasa_cfg.max_images)
    seconds = time.perf_counter() - start
    views = tokens.shape[0] * tokens.shape[1]
    return fit_rasa_tokens(tokens, rasa_cfg, seed), {
        "device": str(on), "precision": inference_precision(on), "features_s": round(seconds, 2),
        "features_per_s": round(views / seconds, 2) if seconds > 0 else None}


@stage("rasa", reads=("rasa", "eval.seed", "eval.batch_size", "train.model.img_size", "train.seed"),
       files=("rasa.dataset",), inputs=("model", "dataset"),
       operational=("eval.device", "eval.num_gpus"))
def rasa(cfg: PipelineConfig, ws: Workspace, model: StageResult, dataset: StageResult) -> StageResult:
    """Fit RASA for ``model`` (a pretrain or highres output); returns the rasa output (files: rasa, summary, plot)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        loaded = load_stage_model(model, local / "in")
        images = rasa_images(cfg, dataset, loaded.model_cfg.patch_size)
        start = time.perf_counter()
        result, device_stats = run_with_gpus(fit_rasa_on_device, cfg.eval.num_gpus, loaded.network, images,
                                             cfg.rasa, cfg.eval.batch_size, cfg.train.seed, cfg.eval.device)
        summary = {**result.summary(), "images": min(len(images), cfg.rasa.max_images),
                   "seconds": round(time.perf_counter() - start, 2)}
        save_file({"rasa.matrix": result.matrix.contiguous(), "rasa.directions": result.directions.contiguous()},
                  str(local / "rasa.safetensors"), metadata={"summary": json.dumps(summary)})
        (local / "summary.json").write_text(json.dumps(summary, indent=1))
        plot_rasa(summary, local / "rasa_mse.png")
        names = {"rasa": "rasa.safetensors", "summary": "summary.json", "plot": "rasa_mse.png"}
        with ws.writing() as out:
            for name in names.values():
                ws.fs.put(str(local / name), f"{out}/{name}")
        out_digest = hashlib.sha256((local / "rasa.safetensors").read_bytes()).hexdigest()
    stats = {k: v for k, v in summary.items() if k != "rounds"} | {"rounds": len(result.rounds)} | device_stats
    return ws.result(out_digest, names, stats)

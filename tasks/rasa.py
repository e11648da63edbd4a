"""Stage 5: fit RASA on the frozen patch tokens of the pretrained teacher; the (D, D) matrix ships with the model.

Images: ``rasa.dataset`` (Parquet or ImageFolder) when set (a deterministic subset drawn with ``eval.seed``), else the
first ``rasa.max_images`` kept images of the dedup output's shards (square crops at the model's size). Output
``<root>/rasa/<key>/``: ``rasa.safetensors``
(``rasa.matrix`` (D, D), ``rasa.directions`` (2 * rounds, D)), ``summary.json`` (per-round MSE) and
``rasa_mse.png``.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

from safetensors.torch import save_file

from franca_core.config import PipelineConfig
from franca_core.eval.data import EvalSet
from franca_core.eval.plots import plot_rasa
from franca_core.eval.position_probe import fit_rasa_on
from tasks.common.contract import stage
from tasks.common.model_io import init_provenance, load_stage_model, shard_images
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


@stage("rasa", reads=("rasa", "eval.seed", "eval.batch_size", "train.model.img_size", "train.seed", "train.init_from"),
       files=("rasa.dataset", "train.init_from"), inputs=("model", "dataset"))
def rasa(cfg: PipelineConfig, ws: Workspace, model: StageResult, dataset: StageResult) -> StageResult:
    """Fit RASA for ``model`` (a pretrain or highres output); returns the rasa output (files: rasa, summary, plot)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        loaded = load_stage_model(model, local / "in")
        images = rasa_images(cfg, dataset, loaded.model_cfg.patch_size)
        start = time.perf_counter()
        result = fit_rasa_on(loaded.network, images, cfg.rasa, cfg.eval.batch_size, cfg.train.seed)
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
    stats = {k: v for k, v in summary.items() if k != "rounds"} | {"rounds": len(result.rounds)}
    stats |= init_provenance(cfg.train.init_from)  # the weights training started from, if any
    return ws.result(out_digest, names, stats)

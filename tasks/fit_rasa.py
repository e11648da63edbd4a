"""Stage 5: fit RASA on the frozen patch tokens of the pretrained teacher; the (D, D) matrix ships with the model.

Plain function (the Prefect task wrapper is ``tasks.prefect_stages.rasa_task``). Images: ``rasa.dataset`` (Parquet or
ImageFolder) when set, else the first ``rasa.max_images`` kept images of the dedup output's shards (square crops at
the pretraining global size), else generated images. Output ``<root>/rasa/<input_digest>/``: ``rasa.safetensors``
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
from franca_core.eval.evaluate import synthetic_sets
from franca_core.eval.plots import plot_rasa
from franca_core.eval.position_probe import fit_rasa_on
from tasks.model_io import load_stage_model, shard_images
from tasks.storage import StageResult, StageStore, input_digest

STAGE = "rasa"


def rasa_images(cfg: PipelineConfig, dataset: StageResult | None, patch_size: int) -> EvalSet:
    """The images RASA is fitted on (see the module docstring for the order of preference)."""
    r = cfg.rasa
    if r.dataset:
        return EvalSet(r.dataset, patch_size, r.resolution, r.max_images, cfg.eval.seed, name="rasa-fit")
    if dataset is not None:
        images = shard_images(dataset, r.max_images)
        if not images:
            raise ValueError(f"the dedup output {dataset.uri} has no kept images to fit RASA on")
        return EvalSet.from_records("rasa-fit", images, patch_size, resolution=r.resolution or
                                    cfg.train.model.img_size, square=True)
    return synthetic_sets(patch_size, n_images=r.max_images, size=cfg.train.model.img_size)["synthetic-train"]


def fit_rasa(cfg: PipelineConfig, model: StageResult, dataset: StageResult | None = None) -> StageResult:
    """Fit RASA for ``model`` (a pretrain or highres output); returns the rasa output (files: rasa, summary, plot)."""
    store = StageStore(cfg.storage.root)
    images_id = cfg.rasa.dataset or (dataset.digest if dataset is not None else "synthetic")
    digest = input_digest(cfg.rasa, {"model": model.digest, "images": images_id, "seed": str(cfg.train.seed)})
    if (done := store.load(STAGE, digest)) is not None:
        return done
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        loaded = load_stage_model(model, local / "in")
        images = rasa_images(cfg, dataset, loaded.model_cfg.patch_size)
        start = time.perf_counter()
        result = fit_rasa_on(loaded.backbone, images, cfg.rasa, cfg.eval.batch_size, cfg.train.seed)
        summary = {**result.summary(), "images": min(len(images), cfg.rasa.max_images),
                   "seconds": round(time.perf_counter() - start, 2)}
        save_file({"rasa.matrix": result.matrix.contiguous(), "rasa.directions": result.directions.contiguous()},
                  str(local / "rasa.safetensors"), metadata={"summary": json.dumps(summary)})
        (local / "summary.json").write_text(json.dumps(summary, indent=1))
        plot_rasa(summary, local / "rasa_mse.png")
        names = {"rasa": "rasa.safetensors", "summary": "summary.json", "plot": "rasa_mse.png"}
        with store.writing(STAGE, digest) as out:
            for name in names.values():
                store.fs.put(str(local / name), f"{out}/{name}")
        final = store.path(STAGE, digest)
        out_digest = hashlib.sha256((local / "rasa.safetensors").read_bytes()).hexdigest()
    stats = {k: v for k, v in summary.items() if k != "rounds"} | {"rounds": len(result.rounds)}
    return store.publish(StageResult(stage=STAGE, uri=store.uri(final), input_digest=digest, digest=out_digest,
                                     stats=stats, files={k: store.uri(f"{final}/{v}") for k, v in names.items()}))

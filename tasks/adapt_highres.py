"""Stage 6: high-resolution adaptation of the pretrained teacher (position grid resize + short training).

Plain function (the Prefect task wrapper is ``tasks.prefect_stages.highres_task``). Training images: ``highres.dataset``
(Parquet or ImageFolder) when set, else the dedup output's shards streamed as in pretraining, else generated images.
Output ``<root>/highres/<input_digest>/``: ``backbone.safetensors`` (self-describing: architecture at the new size
and the high-res train config in its metadata), ``checkpoint.pt`` (full trainer state, weights-only loadable) and
``history.json`` (logged losses).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from franca_core.checkpoint import save_checkpoint
from franca_core.config import PipelineConfig, TrainConfig
from franca_core.data.datasets import ImageFolderDataset, ImageListDataset, ParquetImageDataset
from franca_core.data.shards import ShardIndex, build_loader
from franca_core.data.synthetic import iter_images
from franca_core.highres import adapt_highres as adapt
from franca_core.models.io import save_backbone
from tasks.model_io import load_stage_model
from tasks.storage import StageResult, StageStore, input_digest

STAGE = "highres"


def training_images(cfg: PipelineConfig, dataset: StageResult | None) -> Dataset | Callable[[TrainConfig], Iterable]:
    """What the high-res phase trains on (see the module docstring for the order of preference)."""
    h = cfg.highres
    if h.dataset:
        path = Path(h.dataset)
        return (ImageFolderDataset(path) if path.is_dir() else ParquetImageDataset(path, limit=h.max_images))
    if dataset is not None:
        manifest = dataset.files.get("manifest", f"{dataset.uri.rstrip('/')}/manifest.parquet")
        return lambda hr_cfg: build_loader(ShardIndex.from_manifest(manifest), hr_cfg)
    syn = cfg.data.synthetic
    return ImageListDataset([img for img, _, _ in iter_images(syn.n_images, seed=syn.seed, size=syn.image_size)])


def adapt_highres(cfg: PipelineConfig, model: StageResult, dataset: StageResult | None = None,
                  log: Callable[[str], None] = print) -> StageResult:
    """Adapt ``model`` (a pretrain output) to ``highres.global_size``; returns the highres output (files: backbone,
    checkpoint, history)."""
    store = StageStore(cfg.storage.root)
    images_id = cfg.highres.dataset or (dataset.digest if dataset is not None else "synthetic")
    digest = input_digest({"highres": cfg.highres.model_dump(mode="json"), "train": cfg.train.model_dump(mode="json")},
                          {"model": model.digest, "images": images_id})
    if (done := store.load(STAGE, digest)) is not None:
        return done
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        loaded = load_stage_model(model, local / "in", expected=cfg.train.model)
        stored = loaded.train_config or {}
        train_cfg = TrainConfig.model_validate(stored) if "model" in stored else cfg.train

        def on_log(m: dict[str, Any]) -> None:
            log(f"highres step {m['step']}/{cfg.highres.steps} loss {m['loss']:.4f} {m['images_per_s']:.1f} img/s")

        start = time.perf_counter()
        res = adapt(train_cfg, cfg.highres, loaded.backbone, training_images(cfg, dataset), on_log)
        seconds = time.perf_counter() - start
        save_backbone(res.backbone, res.train_cfg.model, local / "backbone.safetensors",
                      train_config=res.train_cfg.model_dump(mode="json"))
        save_checkpoint(res.trainer.state_dict(), local / "checkpoint.pt")
        (local / "history.json").write_text(json.dumps(res.history, indent=1))
        names = {"backbone": "backbone.safetensors", "checkpoint": "checkpoint.pt", "history": "history.json"}
        with store.writing(STAGE, digest) as out:
            for name in names.values():
                store.fs.put(str(local / name), f"{out}/{name}")
        out_digest = hashlib.sha256((local / "backbone.safetensors").read_bytes()).hexdigest()
    final = store.path(STAGE, digest)
    h = res.history
    stats = {"steps": res.trainer.step, "seconds": round(seconds, 1), "global_size": cfg.highres.global_size,
             "loss_first": h[0]["loss"] if h else None, "loss_last": h[-1]["loss"] if h else None, "history": h}
    return store.publish(StageResult(stage=STAGE, uri=store.uri(final), input_digest=digest, digest=out_digest,
                                     stats=stats, files={k: store.uri(f"{final}/{v}") for k, v in names.items()}))

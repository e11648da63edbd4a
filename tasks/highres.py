"""Stage 6: high-resolution adaptation of the pretrained teacher (position grid resize + short training).

Training images: ``highres.dataset`` (Parquet or ImageFolder) when set, else the dedup output's shards streamed as in
pretraining. Output ``<root>/highres/<key>/``: ``backbone.safetensors`` (self-describing: architecture at the new size
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
from franca_core.data.datasets import ImageFolderDataset, ParquetImageDataset
from franca_core.data.shards import ShardIndex, build_loader
from franca_core.highres import adapt_highres as adapt
from franca_core.models.io import save_backbone
from tasks.common.contract import stage
from tasks.common.model_io import load_stage_model
from tasks.common.store import StageResult, Workspace


def training_images(cfg: PipelineConfig, dataset: StageResult) -> Dataset | Callable[[TrainConfig], Iterable]:
    """What the high-res phase trains on (see the module docstring for the order of preference)."""
    h = cfg.highres
    if h.dataset:
        path = Path(h.dataset)
        return (ImageFolderDataset(path) if path.is_dir() else ParquetImageDataset(path, limit=h.max_images))
    manifest = dataset.files.get("manifest", f"{dataset.uri.rstrip('/')}/manifest.parquet")
    return lambda hr_cfg: build_loader(ShardIndex.from_manifest(manifest), hr_cfg)


@stage("highres", reads=("highres", "train"), files=("highres.dataset",), inputs=("model", "dataset"),
       operational=("train.log_every", "train.max_failures", "train.fail_once_at_step", "train.keep_checkpoints",
                    "train.cpus_per_worker", "train.grad_checkpointing", "train.dist_timeout_s"))
def highres(cfg: PipelineConfig, ws: Workspace, model: StageResult, dataset: StageResult) -> StageResult:
    """Adapt ``model`` (a pretrain output) to ``highres.global_size``; returns the highres output (files: backbone,
    checkpoint, history)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        loaded = load_stage_model(model, local / "in", expected=cfg.train.model)
        stored = loaded.train_config or {}
        train_cfg = TrainConfig.model_validate(stored) if "model" in stored else cfg.train

        def on_log(m: dict[str, Any]) -> None:
            print(f"highres step {m['step']}/{cfg.highres.steps} loss {m['loss']:.4f} {m['images_per_s']:.1f} img/s")

        start = time.perf_counter()
        res = adapt(train_cfg, cfg.highres, loaded.backbone, training_images(cfg, dataset), on_log)
        seconds = time.perf_counter() - start
        save_backbone(res.backbone, res.train_cfg.model, local / "backbone.safetensors",
                      train_config=res.train_cfg.model_dump(mode="json"))
        save_checkpoint(res.trainer.state_dict(), local / "checkpoint.pt")
        (local / "history.json").write_text(json.dumps(res.history, indent=1))
        names = {"backbone": "backbone.safetensors", "checkpoint": "checkpoint.pt", "history": "history.json"}
        with ws.writing() as out:
            for name in names.values():
                ws.fs.put(str(local / name), f"{out}/{name}")
        out_digest = hashlib.sha256((local / "backbone.safetensors").read_bytes()).hexdigest()
    h = res.history
    stats = {"steps": res.trainer.step, "seconds": round(seconds, 1), "global_size": cfg.highres.global_size,
             "loss_first": h[0]["loss"] if h else None, "loss_last": h[-1]["loss"] if h else None, "history": h}
    return ws.result(out_digest, names, stats)

"""Test-only stand-ins for the stage functions: the real declarations (reads, inputs, code), tiny outputs.

They let the orchestration (caching, MLflow lineage, registration) be tested in seconds; the end-to-end tests use the
real stages. Each fake keeps its real stage's declaration, so keys, views and hit checks are the real ones; register
is the real stage (it only talks to MLflow).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import sys
import tempfile
import types
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save_file

from franca_core.config import ModelConfig, PipelineConfig
from franca_core.models.backbone import build_backbone
from franca_core.models.io import save_backbone
from tasks.common.digests import sha256_json
from tasks.common.store import StageResult, Workspace

CALLS: Counter[str] = Counter()
FILES: dict[str, dict[str, bytes]] = {
    "source": {"metadata.parquet": b"url,caption\nhttp://x/1,a\n"},
    "select": {"subset.parquet": b"subset"},
    "download": {"stats.json": b"{}", "00000.tar": b"tar"},
    "dedup": {"manifest.parquet": b"manifest"},
    "pretrain": {"backbone.safetensors": b"weights" * 10},
}


@functools.cache
def _backbone_bytes(model_json: str) -> bytes:
    """A real backbone of the configured architecture (random weights): register loads it to log its pyfunc."""
    model_cfg = ModelConfig.model_validate_json(model_json)
    with tempfile.TemporaryDirectory() as tmp:
        return save_backbone(build_backbone(model_cfg), model_cfg, Path(tmp) / "backbone.safetensors").read_bytes()


def _rasa_bytes(model: StageResult, fs: Any) -> bytes:
    """An identity RASA matrix as wide as the upstream backbone (rasa does not declare ``train.model``)."""
    with fs.open(model.files["backbone"], "rb") as f:
        width = load(f.read())["backbone.cls_token"].shape[-1]
    with tempfile.TemporaryDirectory() as tmp:
        save_file({"rasa.matrix": torch.eye(width)}, str(Path(tmp) / "rasa.safetensors"))
        return (Path(tmp) / "rasa.safetensors").read_bytes()


def _fake(name: str):
    def run(cfg: PipelineConfig, ws: Workspace, **inputs: StageResult) -> StageResult:
        CALLS[name] += 1
        files = dict(FILES.get(name, {}))
        if name == "highres":
            files["backbone.safetensors"] = _backbone_bytes(cfg.train.model.model_dump_json())
        if name == "rasa":
            files["rasa.safetensors"] = _rasa_bytes(inputs["model"], ws.fs)
        if name == "evaluate":
            files["report.json"] = json.dumps({"knn_top1": 0.5, "k": cfg.eval.knn_k}).encode()
        with ws.writing() as tmp:
            for fname, data in files.items():
                with ws.fs.open(f"{tmp}/{fname}", "wb") as f:
                    f.write(data)
        stats: dict[str, Any] = {"items": len(files), "seconds": 0.01}
        if name == "evaluate":
            stats["summary"] = {"knn_top1": 0.5}
        return ws.result(sha256_json({k: v.hex() for k, v in files.items()}),
                         {k.split(".")[0]: k for k in files}, stats)
    return run


def install(monkeypatch: Any, only: tuple[str, ...] | None = None) -> Counter[str]:
    """Put fakes in place of the stage functions (or of ``only`` these) for one test; returns the call counter."""
    CALLS.clear()
    for name in ("source", "select", "download", "dedup", "pretrain", "highres", "rasa", "evaluate"):
        if only is not None and name not in only:
            continue
        real = importlib.import_module(f"tasks.{name}")
        fake = types.ModuleType(f"tasks.{name}")
        setattr(fake, name, dataclasses.replace(getattr(real, name), fn=_fake(name)))
        monkeypatch.setitem(sys.modules, f"tasks.{name}", fake)
    return CALLS

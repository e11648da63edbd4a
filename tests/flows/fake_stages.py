"""Test-only stand-ins for the stage functions: tiny files through StageStore, call counts, same signatures.

They let the orchestration (caching, MLflow lineage, registration) be unit-tested in seconds; the end-to-end tests
use the real stages.
"""

from __future__ import annotations

import json
import sys
import types
from collections import Counter
from typing import Any

from franca_core.config import PipelineConfig
from tasks.storage import StageResult, StageStore, input_digest, sha256_json

CALLS: Counter[str] = Counter()


def _stage(name: str, cfg: PipelineConfig, section: Any, upstream: list[StageResult],
           files: dict[str, bytes]) -> StageResult:
    CALLS[name] += 1
    store = StageStore(cfg.storage.root)
    digest = input_digest(section, {u.stage: u.digest for u in upstream})
    if (done := store.load(name, digest)) is not None:
        return done
    with store.writing(name, digest) as tmp:
        for fname, data in files.items():
            with store.fs.open(f"{tmp}/{fname}", "wb") as f:
                f.write(data)
    final = store.path(name, digest)
    result = StageResult(stage=name, uri=final, input_digest=digest,
                         digest=sha256_json({k: v.hex() for k, v in files.items()}),
                         stats={"items": len(files), "seconds": 0.01, "summary": {"knn_top1": 0.5}}
                         if name == "evaluate" else {"items": len(files), "seconds": 0.01},
                         files={k.split(".")[0]: f"{final}/{k}" for k in files})
    return store.publish(result)


def source(cfg: PipelineConfig) -> StageResult:
    return _stage("source", cfg, cfg.data.synthetic, [], {"metadata.parquet": b"url,caption\nhttp://x/1,a\n"})


def select(cfg: PipelineConfig, urls: StageResult) -> StageResult:
    return _stage("select", cfg, cfg.data.select, [urls], {"subset.parquet": b"subset"})


def download(cfg: PipelineConfig, subset: StageResult) -> StageResult:
    return _stage("download", cfg, cfg.data.download, [subset], {"stats.json": b"{}", "00000.tar": b"tar"})


def dedup(cfg: PipelineConfig, shards: StageResult) -> StageResult:
    return _stage("dedup", cfg, cfg.dedup, [shards], {"manifest.parquet": b"manifest"})


def eval_set_paths(cfg: PipelineConfig) -> list[str]:
    return []


def pretrain(cfg: PipelineConfig, dataset: StageResult) -> StageResult:
    return _stage("pretrain", cfg, cfg.train, [dataset], {"backbone.safetensors": b"weights" * 10})


def fit_rasa(cfg: PipelineConfig, model: StageResult, dataset: StageResult) -> StageResult:
    return _stage("rasa", cfg, cfg.rasa, [model, dataset], {"rasa.safetensors": b"matrix"})


def adapt_highres(cfg: PipelineConfig, model: StageResult, dataset: StageResult) -> StageResult:
    return _stage("highres", cfg, cfg.highres, [model, dataset], {"backbone.safetensors": b"hr-weights"})


def evaluate(cfg: PipelineConfig, model: StageResult, rasa: StageResult) -> StageResult:
    report = json.dumps({"knn_top1": 0.5, "k": cfg.eval.knn_k}).encode()
    return _stage("evaluate", cfg, cfg.eval, [model, rasa], {"report.json": report})


MODULES = {"tasks.source": ["source"], "tasks.select_subset": ["select"], "tasks.download": ["download"],
           "tasks.dedup": ["dedup", "eval_set_paths"], "tasks.pretrain": ["pretrain"], "tasks.fit_rasa": ["fit_rasa"],
           "tasks.adapt_highres": ["adapt_highres"], "tasks.evaluate": ["evaluate"]}


def install(monkeypatch: Any, only: tuple[str, ...] | None = None) -> Counter[str]:
    """Put the fakes in place of the stage modules (or of ``only`` these) for one test; returns the call counter."""
    CALLS.clear()
    for module, names in MODULES.items():
        if only is not None and module not in only:
            continue
        fake = types.ModuleType(module)
        for name in names:
            setattr(fake, name, globals()[name])
        monkeypatch.setitem(sys.modules, module, fake)
    return CALLS

"""``franca bench train``: the pretrain stage's images/s with 1 and 2 Ray workers, and its loader alone (JSON).

    franca bench train                      # images/s with 1 and 2 Ray workers (same global batch), loader alone

Drives the real stage (``tasks.pretrain.pretrain``: Ray Train, streaming shards) for ``--steps`` steps on shards of
``--images`` images of ``../shared/data/tinyimagenet-train`` (generated images where it is absent), once with one
worker and once with two sharing the global batch. ``loader_vs_step``: one rank's loader alone (decode, multi-crop,
masks) against that rank's share of the step's images/s; the loader is no bottleneck at >= 1.5.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from franca_cli.bench.datasets import DATA, parquet_records, shard_dataset, synthetic_records
from franca_cli.options import add_config_options, config_from_args
from franca_core.config import PipelineConfig, TrainConfig, merge
from franca_core.data.shards import ShardIndex, build_loader
from tasks.common.store import StageResult

HELP = "pretrain images/s with 1 and 2 Ray workers, and the loader alone"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The config options, ``--steps``, ``--global-batch``, ``--images`` and ``--work``."""
    add_config_options(parser)
    parser.add_argument("--steps", type=int, default=12, help="training steps per run")
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=512, help="images in the benchmark's shard set")
    parser.add_argument("--work", default=None, help="folder for shards and runs (default: a temporary folder)")


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def loader_images_per_s(dataset: StageResult, cfg: TrainConfig, batches: int) -> float:
    """One rank's loader alone (its ``loader_workers`` processes): decode + multi-crop + masks, images/s."""
    loader = iter(build_loader(ShardIndex.from_manifest(dataset.files["manifest"]), cfg))
    next(loader)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * cfg.optim.batch_size / (time.perf_counter() - start)


def worker_config(cfg: PipelineConfig, root: Path, workers: int, args: argparse.Namespace) -> PipelineConfig:
    """``cfg`` for one run: ``workers`` Ray workers sharing the 2 cores and the global batch, ``--steps`` steps."""
    return PipelineConfig.model_validate(merge(cfg.model_dump(mode="json"), {
        "storage": {"root": str(root)},
        "train": {"num_workers": workers, "cpus_per_worker": 2 / workers, "checkpoint_every": args.steps,
                  "log_every": max(args.steps // 4, 1), "max_minutes": None,
                  "optim": {"total_steps": args.steps, "batch_size": args.global_batch // workers,
                            "warmup_steps": min(cfg.train.optim.warmup_steps, args.steps)}}}))


def run(args: argparse.Namespace) -> int:
    """Pretrain with 1 then 2 workers, time the loader alone after each; print the JSON."""
    from tasks.common.runner import run_stage

    cfg = config_from_args(args)
    with tempfile.TemporaryDirectory(prefix="franca-bench-") as tmp:
        work = Path(args.work or tmp)
        source = DATA / "tinyimagenet-train.parquet"
        records = parquet_records(source, args.images) if source.is_file() else synthetic_records(args.images)
        dataset = shard_dataset(records, work / "shards", shard_size=128)
        out: dict[str, Any] = {"profile": args.config or args.profile, "global_batch": args.global_batch,
                               "steps": args.steps, "images": args.images,
                               "data": "tinyimagenet-train" if source.is_file() else "synthetic"}
        for workers in (1, 2):
            run_cfg = worker_config(cfg, work / f"store-{workers}", workers, args)
            t0 = time.perf_counter()
            stats = run_stage("pretrain", run_cfg, dataset=dataset).stats
            per_rank = stats["images_per_s"] / workers
            loader = loader_images_per_s(dataset, run_cfg.train, batches=8)
            out[f"workers_{workers}"] = {
                "images_per_s": round(stats["images_per_s"], 2), "batch_per_worker": args.global_batch // workers,
                "loader_images_per_s_per_rank": round(loader, 2), "loader_vs_step": round(loader / per_rank, 2),
                "stage_seconds": round(time.perf_counter() - t0, 1)}
            _log(json.dumps(out[f"workers_{workers}"]))
        out["speedup_2_vs_1"] = round(out["workers_2"]["images_per_s"] / out["workers_1"]["images_per_s"], 3)
        out["loader_not_bottleneck"] = all(out[f"workers_{w}"]["loader_vs_step"] >= 1.5 for w in (1, 2))
    print(json.dumps(out, indent=1))
    return 0

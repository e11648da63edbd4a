"""``franca bench loader``: images/s per CPU core of the training loader: decode, multi-crop, CyclicMask (JSON).

    franca bench loader --profile vitb14     # the paper's crops (2 x 224 + 8 x 98 px); goal >= 40 images/s per core
    franca bench loader --profile tiny       # the tiny profile's crops
    franca bench loader --profile vitb14 --source-px 0 --workers 0    # one measurement only

Times the real loader (``multicrop_loader`` over a ``ParquetImageDataset``: JPEG decode, the profile's
``MultiCropAugmentation``, ``MultiCropCollate`` with CyclicMask masks; the pretrain stage's ``ShardStream`` runs the
same three on bytes read from tar shards) in ONE process with one torch thread, so its images/s is per core (the
median of ``--rounds``); then with ``--workers`` loader processes (images/s per worker). Images: the first
``--images`` of ``../shared/data/tinyimagenet-train`` (64 px; generated images where it is absent), as stored and
re-encoded at each ``--source-px`` long side (512: what the download stage writes, ``data.download.long_side``, JPEG
quality 95). ``breakdown_ms_per_image``: the same pieces timed one by one. A 16-core host feeding one GPU at 486
images/s (issue 19) needs about 40 images/s per core.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from franca_cli.bench.datasets import DATA
from franca_cli.options import add_config_options, config_from_args
from franca_core.config import TrainConfig
from franca_core.data.collate import MultiCropCollate
from franca_core.data.datasets import ParquetImageDataset, decode_image
from franca_core.data.multicrop import MultiCropAugmentation
from franca_core.data.multicrop_loader import multicrop_loader
from franca_core.data.synthetic import iter_images
from franca_core.train.loop import forever

HELP = "training loader images/s per CPU core: decode, multi-crop, CyclicMask"
GOAL_PER_CORE = 40.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The config options, ``--images``, ``--batches``, ``--rounds``, ``--source-px`` and ``--workers``."""
    add_config_options(parser)
    parser.add_argument("--images", type=int, default=512, help="images read from the set (the loader cycles)")
    parser.add_argument("--batches", type=int, default=8, help="batches timed per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="one-process measurements per source (median)")
    parser.add_argument("--source-px", type=int, nargs="+", default=[0, 512],
                        help="long sides to re-encode the images at before loading (0: as stored)")
    parser.add_argument("--workers", type=int, default=None,
                        help="also time N loader processes (default: this machine's cores; 0: skip)")


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def source_images(n: int) -> tuple[list[bytes], str]:
    """``n`` JPEGs of tinyimagenet-train (the first rows), or generated 64 px images where it is absent."""
    path = DATA / "tinyimagenet-train.parquet"
    if path.is_file():
        return pq.read_table(path, columns=["image"]).column("image").slice(0, n).to_pylist(), "tinyimagenet-train"
    _log(f"{path} not found: generated 64 px images instead")
    return [_jpeg(im) for im, _, _ in iter_images(n, seed=0, size=64)], "generated (../shared/data absent)"


def _jpeg(image: Image.Image, long_side: int = 0) -> bytes:
    if long_side:
        scale = long_side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_set(images: list[bytes], long_side: int, out: Path) -> Path:
    """The images (re-encoded at ``long_side`` unless 0) as a Parquet file in the ``../shared/data`` layout."""
    if long_side:
        images = [_jpeg(decode_image(b, "source"), long_side) for b in images]
    pq.write_table(pa.table({"image": images, "label": [0] * len(images)}), out)
    return out


def loader_images_per_s(cfg: TrainConfig, dataset: ParquetImageDataset, batches: int, workers: int) -> float:
    """images/s of ``multicrop_loader`` with ``workers`` processes (0: in this process), after one warm-up batch."""
    loader = multicrop_loader(cfg.model_copy(update={"loader_workers": workers}), dataset)
    it = forever(loader)  # epoch after epoch: more batches than the set holds
    next(it)  # worker start-up and first decode are not throughput
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    seconds = time.perf_counter() - start
    del it, loader  # stops persistent workers before the next measurement
    return batches * cfg.optim.batch_size / seconds


def breakdown(cfg: TrainConfig, dataset: ParquetImageDataset) -> dict[str, float]:
    """Milliseconds per image of each piece, in this process: decode, the 2 global crops, the locals, collate."""
    aug, n = MultiCropAugmentation(cfg.crops), min(cfg.optim.batch_size, len(dataset))
    collate = MultiCropCollate(cfg.masking, cfg.model.patch_size)
    clock: dict[str, float] = dict.fromkeys(("decode", "global_crops", "local_crops", "collate"), 0.0)
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        image = dataset[i][0]
        t1 = time.perf_counter()
        globals_ = [aug.global1(image), aug.global2(image)]
        t2 = time.perf_counter()
        locals_ = [aug.local(image) for _ in range(aug.n_local)]
        t3 = time.perf_counter()
        samples.append({"global": globals_, "local": locals_})
        for key, seconds in zip(("decode", "global_crops", "local_crops"), (t1 - t0, t2 - t1, t3 - t2)):
            clock[key] += seconds
    t0 = time.perf_counter()
    collate(samples)
    clock["collate"] = time.perf_counter() - t0
    return {k: round(1000 * v / n, 3) for k, v in clock.items()}


def run(args: argparse.Namespace) -> int:
    """Time the loader on each source size, in one process and with ``--workers`` processes; print the JSON."""
    cfg = config_from_args(args).train
    torch.set_num_threads(1)  # one core: DataLoader workers also run one thread each
    workers = (os.cpu_count() or 1) if args.workers is None else args.workers
    images, data = source_images(args.images)
    crops = cfg.crops
    out: dict[str, Any] = {
        "profile": args.config or args.profile, "data": data, "images": len(images), "torch_threads": 1,
        "crops": f"2 x {crops.global_size} + {crops.n_local} x {crops.local_size} px",
        "batch_size": cfg.optim.batch_size, "goal_images_per_s_per_core": GOAL_PER_CORE, "by_source": {}}
    with tempfile.TemporaryDirectory(prefix="franca-bench-loader-") as tmp:
        for px in args.source_px:
            name = f"{px}px" if px else "as_stored"
            dataset = ParquetImageDataset(write_set(images, px, Path(tmp) / f"{name}.parquet"))
            rounds = [loader_images_per_s(cfg, dataset, args.batches, 0) for _ in range(args.rounds)]
            one = statistics.median(rounds)
            row: dict[str, Any] = {"images_per_s_per_core": round(one, 1), "rounds": [round(r, 1) for r in rounds],
                                   "breakdown_ms_per_image": breakdown(cfg, dataset)}
            _log(f"{name}: {one:.1f} images/s in one process, {row['breakdown_ms_per_image']}")
            if workers:
                many = loader_images_per_s(cfg, dataset, max(args.batches, 4 * workers), workers)
                row.update(workers=workers, workers_images_per_s=round(many, 1),
                           workers_images_per_s_per_worker=round(many / workers, 1))
                _log(f"{name}: {many:.1f} images/s with {workers} loader processes")
            out["by_source"][name] = row
    first = next(iter(out["by_source"].values()))
    out["images_per_s_per_core"] = first["images_per_s_per_core"]
    out["goal_met"] = all(r["images_per_s_per_core"] >= GOAL_PER_CORE for r in out["by_source"].values())
    print(json.dumps(out, indent=1))
    return 0

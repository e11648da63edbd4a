"""``franca bench gpu``: the prepared GPU check: step images/s, MFU, peak memory, evaluation features/s (JSON).

    franca bench gpu                          # CUDA: vitb14, the largest batch up to 64 that fits; CPU: tiny profile
    franca bench gpu --max-batch 32 train.compile=true
    franca bench gpu --profile tiny --rounds 1 --steps 1     # what the CPU test runs

On CUDA (vitb14 by default: ViT-B/14, the paper's crops 2 x 224 + 8 x 98 px, bf16 autocast, TF32 for the float32
parts) the per-GPU batch is the largest of 64, 48, 32, 24, 16, 8, 4, 2, 1 (up to ``--max-batch``) whose step fits
in memory, probed downwards on out-of-memory. Then, as ``franca bench step`` does (interleaved rounds, medians):
``images_per_s`` of the full Franca step and ``backbone_images_per_s`` of the backbone work alone, ``efficiency``
(their ratio); ``mfu``: the step's model FLOPs (``torch.utils.flop_counter.FlopCounterMode`` over one step: forward
and backward, heads included) per second over the device's dense bf16 peak (989 TFLOP/s for H100/H200 SXM; see
``PEAK_BF16_TFLOPS``, ``--peak-tflops`` to state another), null where no peak is known (a CPU states none);
``peak_memory_gb`` (``torch.cuda.max_memory_allocated``, null on a CPU); ``features_per_s``: the evaluation's
frozen-feature path (``extract_eval_features``, generated JPEGs decoded in the process, at the model's size) and
``features_backbone_per_s`` (the teacher backbone alone on a resident batch). Goals on one H200 (issue 19):
``images_per_s`` >= 486 and ``efficiency`` >= 0.85. On a CPU it runs the tiny profile in seconds, so CI runs it.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from franca_cli.bench.step import backbone_work, interleaved_seconds, one_batch
from franca_core.config import TrainConfig, load_config
from franca_core.data.synthetic import iter_images
from franca_core.eval.data import EvalSet
from franca_core.eval.device import inference_autocast
from franca_core.eval.features import extract_eval_features
from franca_core.train.trainer import Batch, FrancaTrainer

HELP = "GPU check: step images/s, backbone images/s, MFU, peak memory, eval features/s"
BATCHES = (64, 48, 32, 24, 16, 8, 4, 2, 1)
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, by a substring of torch.cuda.get_device_name(); the first
# match wins, so the PCIe/NVL variants come before the plain names (SXM).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0),
    ("GH200", 989.0), ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0),
)
GOALS = {"images_per_s": 486.0, "efficiency": 0.85}  # one H200, issue 19


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Profile and overrides (default profile: vitb14 on CUDA, tiny on a CPU), timing and probing options."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--profile", default=None, help="default: vitb14 where CUDA is available, else tiny")
    group.add_argument("--config", default=None, help="a YAML config (may name a base `profile:`)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.compile=true")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--steps", type=int, default=5, help="steps per round and variant")
    parser.add_argument("--max-batch", type=int, default=64, help="largest per-GPU batch probed (CPU: the batch)")
    parser.add_argument("--eval-images", type=int, default=None, help="images of the features measurement "
                        "(default 512 on CUDA, 32 on a CPU)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense bf16 peak for the MFU (default: by GPU name; none on a CPU)")


def peak_tflops(device: torch.device, stated: float | None) -> tuple[float | None, str]:
    """The peak the MFU is measured against, and where it came from."""
    if stated is not None:
        return stated, "--peak-tflops"
    if device.type != "cuda":
        return None, "none stated for a CPU (pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops, f"dense bf16 peak of {key} ({name})"
    return None, f"unknown GPU {name!r} (pass --peak-tflops)"


def _on(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _synced(fn: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """``fn`` then wait for the device: a CUDA step is timed when its kernels are done, not when they are queued."""
    def call() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return call


def fitting_trainer(cfg: TrainConfig, device: torch.device, max_batch: int,
                    log: Callable[[str], None]) -> tuple[FrancaTrainer, Batch, TrainConfig]:
    """The trainer and batch at the largest batch that runs a step and the backbone work (CUDA: probed downwards
    on out-of-memory; a CPU: ``min(max_batch, the profile's batch)``)."""
    sizes = [b for b in BATCHES if b <= max_batch] if device.type == "cuda" else \
        [min(max_batch, cfg.optim.batch_size)]
    for b in sizes:
        sized = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"batch_size": b})})
        trainer = batch = None
        try:
            torch.manual_seed(sized.seed)
            batch = _on(one_batch(sized), device)
            trainer = FrancaTrainer(sized).to(device)
            trainer.train_step(batch)
            backbone_work(trainer, batch)
            return trainer, batch, sized
        except torch.cuda.OutOfMemoryError:
            log(f"batch {b}: out of memory, trying a smaller one")
        # outside the except block: its traceback no longer holds the failed step's tensors
        trainer = batch = None
        gc.collect()
        torch.cuda.empty_cache()
    raise RuntimeError(f"not even a batch of {sizes[-1]} fits on {device}")


def step_flops(trainer: FrancaTrainer, batch: Batch) -> int:
    """Model FLOPs of one full step (forward and backward of student and teacher, heads included)."""
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(batch)
    return int(counter.get_total_flops())


def features_per_s(trainer: FrancaTrainer, n_images: int, device: torch.device) -> dict[str, float]:
    """Evaluation features/s of the teacher backbone: ``extract_eval_features`` over generated JPEGs at the model's
    size, and the backbone alone on a resident batch (what the GPU could take)."""
    backbone, size = trainer.teacher.backbone, trainer.cfg.model.img_size
    jpegs = []
    for image, _, _ in iter_images(n_images, seed=1, size=size):
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=95)
        jpegs.append(buf.getvalue())
    evalset = EvalSet.from_records("bench-gpu", jpegs, trainer.cfg.model.patch_size, resolution=size)
    batch_size = min(128, n_images)
    extract_eval_features(backbone, EvalSet.from_records("warm-up", jpegs[:batch_size], trainer.cfg.model.patch_size,
                                                         resolution=size), batch_size=batch_size)
    t0 = time.perf_counter()
    extract_eval_features(backbone, evalset, batch_size=batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    path_s = time.perf_counter() - t0
    images = torch.randn(batch_size, 3, size, size, device=device)

    @torch.no_grad()
    def forward() -> None:
        with inference_autocast(device):
            backbone.forward_masked(images)

    seconds = statistics.median(interleaved_seconds({"f": _synced(forward, device)}, 3, 2)["f"])
    return {"features_per_s": round(n_images / path_s, 1), "features_backbone_per_s": round(batch_size / seconds, 1)}


def _log(msg: str) -> None:
    import sys

    print(f"[bench gpu] {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Probe the batch, time step and backbone work interleaved, count the FLOPs, measure features; print JSON."""
    start = time.perf_counter()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    profile = args.config or args.profile or ("vitb14" if device.type == "cuda" else "tiny")
    overrides = [*(["train.precision=bf16"] if device.type == "cuda" else []), *args.overrides]
    cfg = load_config(profile, overrides).train
    trainer, batch, cfg = fitting_trainer(cfg, device, args.max_batch, _log)
    b = cfg.optim.batch_size
    _log(f"{device}: batch {b}, precision {trainer.precision}; timing")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    variants = {"step": _synced(lambda: trainer.train_step(batch), device),
                "backbone": _synced(lambda: backbone_work(trainer, batch), device)}
    times = {k: statistics.median(v) for k, v in interleaved_seconds(variants, args.rounds, args.steps).items()}
    peak_gb = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    _log("counting the FLOPs of one step")
    flops = step_flops(trainer, batch)
    step_ips, backbone_ips = b / times["step"], b / times["backbone"]
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    achieved = flops / times["step"] / 1e12
    n_eval = args.eval_images or (512 if device.type == "cuda" else 32)
    _log(f"evaluation features of {n_eval} images")
    feats = features_per_s(trainer, n_eval, device)
    crops = cfg.crops
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "profile": profile, "batch_size": b, "precision": trainer.precision, "compile": cfg.compile,
        "crops": f"2 x {crops.global_size} + {crops.n_local} x {crops.local_size} px",
        "images_per_s": round(step_ips, 2), "backbone_images_per_s": round(backbone_ips, 2),
        "efficiency": round(step_ips / backbone_ips, 3),
        "mfu": round(achieved / peak, 4) if peak else None, "model_tflops_per_s": round(achieved, 3),
        "flops_per_step": flops, "peak_tflops": peak, "peak_source": peak_source,
        "peak_memory_gb": round(peak_gb, 2) if peak_gb is not None else None,
        **feats, "eval_images": n_eval, "threads": torch.get_num_threads(),
        "goals_h200": GOALS, "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(out, indent=1))
    return 0

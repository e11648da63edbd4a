"""``franca bench ...``: benchmark commands that print JSON (figures, never timed tests).

    franca bench step --profile tiny      # full Franca step vs the unavoidable backbone work, interleaved
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import statistics
import time

import torch

from franca_cli.options import add_config_options, config_from_args
from franca_core.data.collate import MultiCropCollate
from franca_core.data.multicrop import MultiCropAugmentation
from franca_core.data.synthetic import iter_images
from franca_core.train.trainer import Batch, FrancaTrainer

# Modules that define ``register_bench(bench_subparsers)``; this module registers ``step`` itself.
BENCH_MODULES: list[str] = ["franca_cli.bench_train", "franca_cli.bench_data", "franca_cli.bench_pipeline",
                            "franca_cli.bench_eval"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (JSON on stdout)")
    bench = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for module in BENCH_MODULES:
        importlib.import_module(module).register_bench(bench)
    step = bench.add_parser("step", help="images/s of the full step vs backbone-only work, and their ratio")
    add_config_options(step)
    step.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    step.add_argument("--steps", type=int, default=4, help="steps per round and variant")
    step.set_defaults(func=bench_step)


def backbone_work(trainer: FrancaTrainer, batch: Batch) -> None:
    """What any ViT self-distillation step must do: student fwd+bwd on all crops, teacher fwd on the globals."""
    student, teacher = trainer.student_core.backbone, trainer.teacher.backbone
    with trainer.autocast():  # the same precision as the step it is compared with
        with torch.no_grad():
            teacher.forward_masked(batch["global_crops"])
        g = student.forward_masked(batch["global_crops"], batch["masks"])
        loc = student.forward_masked(batch["local_crops"]) if batch["local_crops"].shape[0] else None
        total = g["cls"].sum() + g["patch"].sum() + (loc["cls"].sum() if loc is not None else 0.0)
    trainer.optimizer.zero_grad(set_to_none=True)
    total.backward()
    trainer.optimizer.zero_grad(set_to_none=True)


def bench_step(args: argparse.Namespace) -> int:
    cfg = config_from_args(args).train
    torch.manual_seed(cfg.seed)
    aug, collate = MultiCropAugmentation(cfg.crops), MultiCropCollate(cfg.masking, cfg.model.patch_size)
    images = [im for im, _, _ in iter_images(cfg.optim.batch_size, seed=0, size=cfg.crops.global_size)]
    batch = collate([aug(im) for im in images])
    trainer = FrancaTrainer(cfg)
    variants = {"step": lambda: trainer.train_step(batch), "backbone": lambda: backbone_work(trainer, batch)}
    if trainer.precision != "fp32":  # the same step in float32, interleaved: what the lower precision buys here
        trainer32 = FrancaTrainer(cfg.model_copy(update={"precision": "fp32"}))
        variants["step_fp32"] = lambda: trainer32.train_step(batch)
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[name].append((time.perf_counter() - t0) / args.steps)
    b = cfg.optim.batch_size
    step_ips, backbone_ips = b / statistics.median(times["step"]), b / statistics.median(times["backbone"])
    print(json.dumps({
        "profile": args.config or args.profile, "batch_size": b, "threads": torch.get_num_threads(),
        "step_images_per_s": round(step_ips, 2), "backbone_images_per_s": round(backbone_ips, 2),
        "efficiency": round(step_ips / backbone_ips, 3),
        "precision": trainer.precision, "precision_setting": cfg.precision,
        **({"step_fp32_images_per_s": round(b / statistics.median(times["step_fp32"]), 2),
            "speedup_vs_fp32": round(statistics.median(times["step_fp32"]) / statistics.median(times["step"]), 3)}
           if "step_fp32" in times else {}),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }, indent=1))
    return 0

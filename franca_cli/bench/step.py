"""``franca bench step``: images/s of the full Franca training step vs the unavoidable backbone work (JSON).

    franca bench step --profile tiny                      # 5 interleaved rounds of 4 steps per variant
    franca bench step --profile tiny train.precision=bf16 --rounds 2 --steps 2

The backbone work is what any ViT self-distillation step must do: the student's forward and backward on all crops
and the teacher's forward on the global crops, at the step's precision. ``efficiency`` = step images/s over
backbone-only images/s (what heads, Sinkhorn-Knopp, losses, clipping, AdamW and the EMA cost). Where
``train.precision`` resolves to bf16, the same step in float32 is timed alongside (``speedup_vs_fp32``).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable, Mapping

import torch

from franca_cli.options import add_config_options, config_from_args
from franca_core.config import TrainConfig
from franca_core.data.collate import MultiCropCollate
from franca_core.data.multicrop import MultiCropAugmentation
from franca_core.data.synthetic import iter_images
from franca_core.train.trainer import Batch, FrancaTrainer

HELP = "images/s of the full step vs backbone-only work, and their ratio"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The config options, ``--rounds`` and ``--steps``."""
    add_config_options(parser)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=4, help="steps per round and variant")


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


def one_batch(cfg: TrainConfig) -> Batch:
    """One multi-crop batch of generated images, as the loader would build it."""
    aug, collate = MultiCropAugmentation(cfg.crops), MultiCropCollate(cfg.masking, cfg.model.patch_size)
    images = [im for im, _, _ in iter_images(cfg.optim.batch_size, seed=0, size=cfg.crops.global_size)]
    return collate([aug(im) for im in images])


def interleaved_seconds(variants: Mapping[str, Callable[[], object]], rounds: int,
                        steps: int) -> dict[str, list[float]]:
    """Seconds per call of each variant, per round; one warm-up call each, then the variants take turns."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - t0) / steps)
    return times


def run(args: argparse.Namespace) -> int:
    """Time the step, the backbone work (and the fp32 step) interleaved; print the JSON."""
    cfg = config_from_args(args).train
    torch.manual_seed(cfg.seed)
    batch = one_batch(cfg)
    trainer = FrancaTrainer(cfg)
    variants = {"step": lambda: trainer.train_step(batch), "backbone": lambda: backbone_work(trainer, batch)}
    if trainer.precision != "fp32":  # the same step in float32, interleaved: what the lower precision buys here
        trainer32 = FrancaTrainer(cfg.model_copy(update={"precision": "fp32"}))
        variants["step_fp32"] = lambda: trainer32.train_step(batch)
    times = {k: statistics.median(v) for k, v in interleaved_seconds(variants, args.rounds, args.steps).items()}
    b = cfg.optim.batch_size
    step_ips, backbone_ips = b / times["step"], b / times["backbone"]
    print(json.dumps({
        "profile": args.config or args.profile, "batch_size": b, "threads": torch.get_num_threads(),
        "step_images_per_s": round(step_ips, 2), "backbone_images_per_s": round(backbone_ips, 2),
        "efficiency": round(step_ips / backbone_ips, 3),
        "precision": trainer.precision, "precision_setting": cfg.precision,
        **({"step_fp32_images_per_s": round(b / times["step_fp32"], 2),
            "speedup_vs_fp32": round(times["step_fp32"] / times["step"], 3)} if "step_fp32" in times else {}),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }, indent=1))
    return 0

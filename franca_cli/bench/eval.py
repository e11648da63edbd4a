"""``franca bench eval``: pretrain (or reuse) a tiny model on tinyimagenet-train, fit RASA, run the whole suite.

    franca bench eval                                   # pretrain --pretrain-steps (cached), then evaluate
    franca bench eval --checkpoint runs/train/checkpoint.pt
    franca bench eval --pretrain-steps 200 --pretrain-minutes 30 eval.max_images=1000

Sets (``--data``, the ``../shared/data`` folder): tinyimagenet-train/val (k-NN, linear, Matryoshka; RASA is fitted
on tinyimagenet-train), pets-trainval/test (overclustering, in-context, position probe), camvid-train/test
(in-context, overclustering) and tinyimagenet-val vs camvid-test for OOD. Features are extracted afresh on every
run (a new cache folder), so ``features_per_s`` is a measurement. Prints JSON with ``seconds``, ``features_per_s``,
``rasa.*``, ``knn_top1.before_rasa / after_rasa`` (tinyimagenet-val, mean-pooled patch tokens, k=20),
``overcluster_miou.pets_before_rasa / pets``, ``matryoshka`` (dimension -> k-NN top-1 of CLS),
``incontext_miou.camvid``, ``ood.auroc / fpr95`` and ``pretrain`` (how the model was trained).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from franca_cli.bench.datasets import DATA
from franca_cli.options import add_config_options
from franca_core.checkpoint import load_checkpoint
from franca_core.config import PipelineConfig, config_digest, load_config
from franca_core.data.datasets import ParquetImageDataset
from franca_core.eval.device import resolve_device
from franca_core.eval.evaluate import evaluate_backbone, open_sets, random_init
from franca_core.models.io import load_backbone
from franca_core.train.driver import StepBudget, pretrain

HELP = "pretrain (or reuse) a tiny model, fit RASA, run every protocol (JSON)"
SETS = ("tinyimagenet-train", "tinyimagenet-val", "pets-trainval", "pets-test", "camvid-train", "camvid-test")
# Bench defaults (CPU minutes): subsets of the two large sets, everything of the small ones.
DEFAULTS = ["eval.max_images_per_set={tinyimagenet-train: 2000, tinyimagenet-val: 1000}", "eval.ood_in=tinyimagenet",
            "eval.ood_out=camvid", "rasa.max_images=500", "eval.incontext_bank_size=5000"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The config options, the pretraining's (``--checkpoint``, ``--pretrain-*``), ``--work`` and ``--data``."""
    add_config_options(parser)
    parser.add_argument("--checkpoint", default=None, help="evaluate this checkpoint instead of pretraining")
    parser.add_argument("--pretrain-steps", type=int, default=40, help="steps of the tiny pretraining (cached)")
    parser.add_argument("--pretrain-batch", type=int, default=32, help="batch size of the tiny pretraining")
    parser.add_argument("--pretrain-minutes", type=float, default=None, help="wall cap of the tiny pretraining")
    parser.add_argument("--work", default=".franca/bench/eval", help="pretrained checkpoints and the report")
    parser.add_argument("--data", default=str(DATA), help="the ../shared/data folder")


def _log(msg: str) -> None:
    print(f"[bench eval] {msg}", file=sys.stderr, flush=True)


def pretrained(cfg: PipelineConfig, data: Path, work: Path, steps: int, batch: int,
               minutes: float | None) -> tuple[Path, dict[str, Any]]:
    """A tiny model trained ``steps`` steps on tinyimagenet-train, cached under ``work`` by its config."""
    train = load_config("tiny", [f"train.optim.batch_size={batch}", "train.crops.n_local=2",
                                 f"train.optim.total_steps={steps}", f"train.optim.warmup_steps={max(1, steps // 10)}",
                                 f"train.loss.teacher_temp_warmup_steps={max(1, steps // 2)}",
                                 f"train.optim.freeze_last_layer_steps={max(1, steps // 20)}"]).train
    folder = work / f"pretrain-{config_digest(train)[:12]}"
    ckpt, meta_file = folder / "checkpoint.pt", folder / "pretrain.json"
    if ckpt.is_file() and meta_file.is_file():
        return ckpt, {**json.loads(meta_file.read_text()), "reused": True}
    _log(f"pretraining the tiny profile on tinyimagenet-train: {steps} steps of {batch} images")
    budget = StepBudget(steps, log_every=10, max_seconds=minutes * 60 if minutes else None)
    result = pretrain(train, ParquetImageDataset(data / "tinyimagenet-train.parquet"), budget,
                      on_log=lambda m: _log(f"step {m['step']} loss {m['loss']:.3f}"))
    meta = {"steps": result.steps, "batch_size": batch, "images_seen": result.steps * batch,
            "seconds": round(result.seconds, 1), "profile": "tiny (n_local=2)", "loss_last": result.loss_last}
    result.save_checkpoint(ckpt)
    meta_file.write_text(json.dumps(meta, indent=1))
    return ckpt, {**meta, "reused": False}


def bench_json(report: dict[str, Any], seconds: float, pretraining: dict[str, Any]) -> dict[str, Any]:
    """The issue's keys, read from the suite report."""
    res, rasa = report["results"], report.get("rasa", {})
    knn = res["knn"]["tinyimagenet"]
    pets, camvid = res["overcluster"]["pets"], res["incontext"]["camvid"]
    k_pets = f"K={pets['classes']}"
    return {
        "seconds": round(seconds, 1), "features_per_s": report["timing"]["features_per_s"],
        "rasa": {k: rasa.get(k) for k in ("mse_before", "mse_after", "chance", "grid")},
        "knn_top1": {"before_rasa": knn["patch_mean"][20], "after_rasa": knn["patch_mean_rasa"][20],
                     "cls": knn["cls"][20]},
        "overcluster_miou": {"pets_before_rasa": pets["raw"][k_pets], "pets": pets["rasa"][k_pets],
                             "camvid": res["overcluster"]["camvid"]["rasa"]
                             [f"K={res['overcluster']['camvid']['classes']}"]},
        "matryoshka": res["matryoshka"]["tinyimagenet"]["knn"],
        "linear_top1": res["linear"]["tinyimagenet"]["cls"],
        "incontext_miou": {"camvid": camvid["rasa"], "camvid_before_rasa": camvid["raw"],
                           "pets": res["incontext"]["pets"]["rasa"]},
        "position_mse": {"pets_before_rasa": res["position"]["pets"]["raw"]["mse"],
                         "pets": res["position"]["pets"]["rasa"]["mse"]},
        "ood": {"auroc": res["ood"]["auroc"], "fpr95": res["ood"]["fpr95"], "in": "tinyimagenet-val",
                "out": "camvid-test"},
        "timing": {k: v for k, v in report["timing"].items() if k.endswith("_s")},
        "pretrain": pretraining, "threads": torch.get_num_threads(),
        # the same architecture at random init through the same protocol (eval.baseline), and 3D awareness
        "random_init_knn_top1_cls": (report.get("baseline") or {}).get("knn", {}).get("tinyimagenet", {})
        .get("cls", {}).get(20),
        "correspondence": res.get("correspondence", {}),
    }


def run(args: argparse.Namespace) -> int:
    """Pretrain or reuse, fit RASA, evaluate, print the JSON."""
    start = time.perf_counter()
    data, work = Path(args.data), Path(args.work)
    missing = [s for s in SETS if not (data / f"{s}.parquet").is_file()]
    if missing:
        print(f"franca bench eval: error: {missing} not found under {data} (see ../shared/data/README.md)",
              file=sys.stderr)
        return 2
    cfg = load_config(args.config or args.profile, [*DEFAULTS, *args.overrides])
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        pretraining = {"checkpoint": str(ckpt), "steps": int(load_checkpoint(ckpt).get("step", -1)), "reused": True}
    else:
        ckpt, pretraining = pretrained(cfg, data, work, args.pretrain_steps, args.pretrain_batch, args.pretrain_minutes)
    loaded = load_backbone(ckpt)
    loaded.backbone.to(resolve_device(cfg.eval.device))  # eval.device: CUDA where visible (the baseline follows)
    sets = open_sets({s: str(data / f"{s}.parquet") for s in SETS}, loaded.model_cfg.patch_size, cfg.eval)
    with tempfile.TemporaryDirectory() as cache:
        eval_cfg = cfg.eval.model_copy(update={"cache_dir": cache})
        report, files, _ = evaluate_backbone(loaded.backbone, sets, eval_cfg, cfg.rasa, work / "report",
                                             n_levels=cfg.train.heads.n_levels, fit_rasa_set="tinyimagenet-train",
                                             log=_log, baseline=random_init(loaded.model_cfg, eval_cfg.seed)
                                             if eval_cfg.baseline else None)
    out = bench_json(report, time.perf_counter() - start, pretraining)
    out["report"] = str(files["markdown"])
    print(json.dumps(out, indent=1, default=str))
    return 0

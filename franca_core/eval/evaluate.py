"""One call from a backbone and named image sets to a written report (JSON, Markdown, PNGs).

Used by ``franca eval``, ``franca bench eval`` and the evaluate stage (``tasks/evaluate.py``). Optionally fits RASA
first on one of the sets (``fit_rasa_set``), so a plain pretrained checkpoint gets its "rasa" variants and the RASA
section (per-round MSE and plot) in the same report.

A random-init ``baseline`` (``random_init``: the same architecture, seeded by ``eval.seed``) runs through the same
suite on the same sets, so every figure of the report has the value of a network that learnt nothing beside it
(``report["baseline"]``, the structure of ``report["results"]``). It gets its own RASA where the model's is fitted
here (``fit_rasa_set``); a RASA matrix fitted elsewhere (the rasa stage, a checkpoint's) belongs to the trained
weights alone, so the baseline then has no "rasa" variants rather than a projection fitted on other images.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from franca_core.config import EvalConfig, ModelConfig, RasaConfig
from franca_core.data.synthetic import SHAPES, TEXTURES, iter_images
from franca_core.eval.data import EvalSet
from franca_core.eval.device import inference_precision, module_device
from franca_core.eval.position_probe import fit_rasa_on
from franca_core.eval.report import write_report
from franca_core.eval.suite import EvalSuite
from franca_core.models.backbone import FrancaViT, build_backbone
from franca_core.rasa import RasaResult


def open_sets(paths: Mapping[str, str], patch_size: int, cfg: EvalConfig) -> dict[str, EvalSet]:
    """``EvalSet`` per name, with the configured resolution and (per-set) image limits."""
    return {name: EvalSet(path, patch_size, cfg.resolution, cfg.max_images_per_set.get(name, cfg.max_images),
                          cfg.seed, cfg.mask_max_side, name) for name, path in paths.items()}


def _png(array: np.ndarray | Image.Image) -> bytes:
    buf = io.BytesIO()
    (array if isinstance(array, Image.Image) else Image.fromarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def synthetic_sets(patch_size: int, n_images: int = 200, size: int = 64, seed: int = 1000,
                   style: str = "objects") -> dict[str, EvalSet]:
    """Generated labelled + segmented images (``franca_core.data.synthetic``) as a train/test pair.

    The fallback when no evaluation set is configured: every protocol except OOD has its inputs. ``style`` should be
    the pretraining corpus's (``data.synthetic.style``); the seed differs from the corpus's default, so these are new
    images of the same classes.
    """
    names = TEXTURES if style == "textures" else SHAPES
    sets = {}
    for split, offset in (("train", 0), ("test", 1)):
        samples = list(iter_images(n_images, seed=seed + offset, size=size, style=style))
        sets[f"synthetic-{split}"] = EvalSet.from_records(
            f"synthetic-{split}", [_png(img) for img, _, _ in samples], patch_size,
            labels=[int(label) for _, _, label in samples],
            masks=[_png(np.asarray(mask, dtype=np.uint8)) for _, mask, _ in samples],
            mask_classes=["background", *names])
    return sets


def random_init(model_cfg: ModelConfig, seed: int) -> FrancaViT:
    """The baseline network: ``model_cfg``'s architecture with random initial weights, seeded by ``seed``.

    Built as pretraining builds its backbone (``build_backbone``, timm's initialisation), without stochastic depth
    (an evaluated network has none); the global random state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_backbone(model_cfg, drop_path=0.0).eval()


def matryoshka_retained(results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per set group: accuracy at the smallest truncation (D/64) over accuracy at the full dimension D.

    ``results["matryoshka"][group]`` is a ``truncation_table`` with its ``dims``; each of ``knn`` and ``linear``
    present gives a ratio (``None`` when the accuracy at D is 0). Keys of the table may be ints or (from JSON) str.
    """
    out: dict[str, dict[str, Any]] = {}
    for group, table in results.get("matryoshka", {}).items():
        small, full = min(table["dims"]), max(table["dims"])
        row: dict[str, Any] = {"d": small, "D": full}
        for key in ("knn", "linear"):
            if key in table:
                accs = {int(d): float(v) for d, v in table[key].items()}
                row[key] = accs[small] / accs[full] if accs[full] > 0 else None
        out[group] = row
    return out


def _run_suite(model: nn.Module, sets: dict[str, EvalSet], cfg: EvalConfig, rasa_cfg: RasaConfig, cache_dir: str,
               n_levels: int, rasa_matrix: torch.Tensor | None, fit_rasa_set: str | None,
               log: Callable[[str], None]) -> tuple[dict[str, Any], EvalSuite, RasaResult | None]:
    """RASA fitted on ``fit_rasa_set`` (if given), then the suite; the report, the suite (figures) and the fit."""
    fitted = None
    if fit_rasa_set is not None:
        log(f"eval: fitting RASA ({rasa_cfg.rounds} rounds) on {fit_rasa_set}")
        fitted = fit_rasa_on(model, sets[fit_rasa_set], rasa_cfg, cfg.batch_size, cfg.seed)
        rasa_matrix = fitted.matrix
    suite = EvalSuite(model, sets, cfg, rasa_cfg, n_levels, rasa_matrix, cache_dir, log)
    report = suite.run()
    if fitted is not None:
        report["rasa"] = {"fitted_on": fit_rasa_set, **fitted.summary()}
    return report, suite, fitted


def evaluate_backbone(backbone: nn.Module, sets: dict[str, EvalSet], cfg: EvalConfig, rasa_cfg: RasaConfig,
                      out_dir: str | Path, n_levels: int = 5, rasa_matrix: torch.Tensor | None = None,
                      fit_rasa_set: str | None = None, log: Callable[[str], None] = print,
                      baseline: nn.Module | None = None,
                      ) -> tuple[dict[str, Any], dict[str, Path], RasaResult | None]:
    """Run the suite (and on ``baseline`` the same suite) and write the report.

    Args:
        backbone: the raw backbone (``forward_masked``); a RASA matrix is given separately.
        sets: name -> ``EvalSet`` (``open_sets`` / ``synthetic_sets``).
        fit_rasa_set: fit RASA on this set first (overrides ``rasa_matrix``); the baseline gets its own fit.
        baseline: a network of the same architecture at random init (``random_init``); its results go to
            ``report["baseline"]`` (no "rasa" variants when ``rasa_matrix`` came from elsewhere).

    Returns:
        The report dict, the written files (logical name -> path) and the fitted RASA result, if any.
    """
    if fit_rasa_set is not None and fit_rasa_set not in sets:
        raise ValueError(f"RASA fitting set '{fit_rasa_set}' is not among the sets {sorted(sets)}")
    cache_dir = cfg.cache_dir or str(Path(out_dir) / "cache")
    report, suite, fitted = _run_suite(backbone, sets, cfg, rasa_cfg, cache_dir, n_levels, rasa_matrix, fit_rasa_set,
                                       log)
    device = module_device(backbone)
    report["device"] = {"device": str(device), "precision": inference_precision(device)}
    retained = matryoshka_retained(report["results"])
    if baseline is not None:
        t0 = time.perf_counter()
        baseline.to(module_device(backbone))  # evaluated where the model is
        base, _, base_fit = _run_suite(baseline, sets, cfg, rasa_cfg, cache_dir, n_levels, None, fit_rasa_set,
                                       lambda s: log(f"random init: {s}"))
        report["baseline"] = base["results"]
        report["model"]["baseline"] = {"init": "random", "seed": cfg.seed, "digest": base["model"]["digest"],
                                       "rasa": base_fit is not None}
        report["timing"]["baseline_s"] = round(time.perf_counter() - t0, 2)
        for group, row in matryoshka_retained(base["results"]).items():
            if group in retained:
                retained[group]["random_init"] = {k: v for k, v in row.items() if k in ("knn", "linear")}
    if retained:
        report["matryoshka_retained"] = retained
    files = write_report(report, out_dir, suite.figures, sets)
    return report, files, fitted

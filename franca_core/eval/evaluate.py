"""One call from a backbone and named image sets to a written report (JSON, Markdown, PNGs).

Used by ``franca eval``, ``franca bench eval`` and the evaluate stage (``tasks/evaluate.py``). Optionally fits RASA
first on one of the sets (``fit_rasa_set``), so a plain pretrained checkpoint gets its "rasa" variants and the RASA
section (per-round MSE and plot) in the same report.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from franca_core.config import EvalConfig, RasaConfig
from franca_core.data.synthetic import SHAPES, iter_images
from franca_core.eval.data import EvalSet
from franca_core.eval.position_probe import fit_rasa_on
from franca_core.eval.report import write_report
from franca_core.eval.suite import EvalSuite
from franca_core.rasa import RasaResult


def open_sets(paths: Mapping[str, str], patch_size: int, cfg: EvalConfig) -> dict[str, EvalSet]:
    """``EvalSet`` per name, with the configured resolution and (per-set) image limits."""
    return {name: EvalSet(path, patch_size, cfg.resolution, cfg.max_images_per_set.get(name, cfg.max_images),
                          cfg.seed, cfg.mask_max_side, name) for name, path in paths.items()}


def _png(array: np.ndarray | Image.Image) -> bytes:
    buf = io.BytesIO()
    (array if isinstance(array, Image.Image) else Image.fromarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def synthetic_sets(patch_size: int, n_images: int = 200, size: int = 64, seed: int = 1000) -> dict[str, EvalSet]:
    """Generated labelled + segmented images (``franca_core.data.synthetic``) as a train/test pair.

    The fallback when no evaluation set is configured: every protocol except OOD has its inputs. The seed differs
    from the pretraining corpus's default, so these are new images of the same classes.
    """
    sets = {}
    for split, offset in (("train", 0), ("test", 1)):
        samples = list(iter_images(n_images, seed=seed + offset, size=size))
        sets[f"synthetic-{split}"] = EvalSet.from_records(
            f"synthetic-{split}", [_png(img) for img, _, _ in samples], patch_size,
            labels=[int(label) for _, _, label in samples],
            masks=[_png(np.asarray(mask, dtype=np.uint8)) for _, mask, _ in samples],
            mask_classes=["background", *SHAPES])
    return sets


def evaluate_backbone(backbone: nn.Module, sets: dict[str, EvalSet], cfg: EvalConfig, rasa_cfg: RasaConfig,
                      out_dir: str | Path, n_levels: int = 5, rasa_matrix: torch.Tensor | None = None,
                      fit_rasa_set: str | None = None, log: Callable[[str], None] = print,
                      ) -> tuple[dict[str, Any], dict[str, Path], RasaResult | None]:
    """Run the suite and write the report.

    Args:
        backbone: the raw backbone (``forward_masked``); a RASA matrix is given separately.
        sets: name -> ``EvalSet`` (``open_sets`` / ``synthetic_sets``).
        fit_rasa_set: fit RASA on this set first (overrides ``rasa_matrix``).

    Returns:
        The report dict, the written files (logical name -> path) and the fitted RASA result, if any.
    """
    fitted = None
    if fit_rasa_set is not None:
        if fit_rasa_set not in sets:
            raise ValueError(f"RASA fitting set '{fit_rasa_set}' is not among the sets {sorted(sets)}")
        log(f"eval: fitting RASA ({rasa_cfg.rounds} rounds) on {fit_rasa_set}")
        fitted = fit_rasa_on(backbone, sets[fit_rasa_set], rasa_cfg, cfg.batch_size, cfg.seed)
        rasa_matrix = fitted.matrix
    cache_dir = cfg.cache_dir or str(Path(out_dir) / "cache")
    suite = EvalSuite(backbone, sets, cfg, rasa_cfg, n_levels, rasa_matrix, cache_dir, log)
    report = suite.run()
    if fitted is not None:
        report["rasa"] = {"fitted_on": fit_rasa_set, **fitted.summary()}
    files = write_report(report, out_dir, suite.figures, sets)
    return report, files, fitted

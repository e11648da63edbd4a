"""Patch tokens of an image set under dihedral augmentation, for fitting RASA and for the position probe.

Reference: ``valeoai/Franca: rasa/src/rasa.py`` (tokens = last-layer patch tokens after the final norm of the
frozen backbone; flips and rotations as augmentation). The tokens of ``views`` augmented copies of every image are
computed once (the backbone pass is the expensive part; the regressors are cheap), then split by IMAGE into a
fitting part and a held-out part, so the reported MSE is measured on images no regressor saw. The backbone passes
run on the backbone's device (``franca_core.eval.device``); tokens and regressors stay on the CPU.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from franca_core.config import RasaConfig
from franca_core.eval.data import EvalSet
from franca_core.eval.device import inference_autocast, module_device
from franca_core.eval.features import ForwardMasked
from franca_core.rasa import RasaResult, dihedral, dihedral_choices, fit_rasa, position_probe


@torch.no_grad()
def augmented_tokens(backbone: nn.Module, evalset: EvalSet, views: int, batch_size: int = 128,
                     seed: int = 0, limit: int | None = None) -> torch.Tensor:
    """(n_images, views, h, w, D) float16 patch tokens of the first ``limit`` images; view 0 is the identity, the
    others random dihedral elements."""
    h, w = evalset.grid
    data = Subset(evalset, range(min(limit, len(evalset)))) if limit is not None else evalset
    choices = dihedral_choices(h, w)
    gen = torch.Generator().manual_seed(seed)
    device = module_device(backbone)
    was_training = backbone.training
    backbone.eval()
    chunks = []
    for images, _, _ in DataLoader(data, batch_size=batch_size, pin_memory=device.type == "cuda"):
        per_view = []
        for v in range(views):
            ks = [0] * len(images) if v == 0 else [choices[int(i)] for i in
                                                    torch.randint(len(choices), (len(images),), generator=gen)]
            batch = torch.stack([dihedral(img, k) for img, k in zip(images, ks)]).to(device, non_blocking=True)
            with inference_autocast(device):
                patch = cast(ForwardMasked, backbone.forward_masked)(batch)["patch"]
            per_view.append(patch.float().reshape(len(images), h, w, -1).half().cpu())
        chunks.append(torch.stack(per_view, dim=1))
    backbone.train(was_training)
    return torch.cat(chunks)


def split_images(n: int, holdout: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (fit, held-out) image indices; at least one image on each side."""
    if n < 2:
        raise ValueError(f"RASA needs at least 2 images (one to fit, one held out); got {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(max(1, int(round(n * holdout))), n - 1)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def fit_rasa_on(backbone: nn.Module, evalset: EvalSet, cfg: RasaConfig, batch_size: int = 128,
                seed: int = 0) -> RasaResult:
    """Fit RASA on (at most ``cfg.max_images`` of) an image set: all augmented views of the fitting images,
    identity views of the held-out ones; the rounds compose as ``cfg.composition`` (``franca_core.rasa``)."""
    return fit_rasa_tokens(augmented_tokens(backbone, evalset, cfg.views, batch_size, seed, limit=cfg.max_images),
                           cfg, seed)


def fit_rasa_tokens(tokens: torch.Tensor, cfg: RasaConfig, seed: int = 0) -> RasaResult:
    """``fit_rasa_on``'s fit, on the (n_images, views, h, w, D) tokens of ``augmented_tokens``."""
    fit_idx, test_idx = split_images(len(tokens), cfg.holdout, seed)
    train = tokens[torch.from_numpy(fit_idx)].flatten(0, 1)  # (n_fit * views, h, w, D)
    test = tokens[torch.from_numpy(test_idx), 0]
    return fit_rasa(train, test, cfg, seed)


def position_probe_on(patch: torch.Tensor, cfg: RasaConfig, seed: int = 0,
                      matrix: torch.Tensor | None = None) -> dict[str, float]:
    """The RASA position probe on cached (n, h, w, D) patch tokens (optionally projected as ``x @ matrix``; a
    sequentially composed matrix is not symmetric, so the order matters)."""
    fit_idx, test_idx = split_images(len(patch), cfg.holdout, seed)
    tokens = patch.float() if matrix is None else patch.float() @ matrix
    return position_probe(tokens[torch.from_numpy(fit_idx)], tokens[torch.from_numpy(test_idx)], cfg, seed)

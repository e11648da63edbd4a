"""Feature cache: features are computed once per (model weights, image set, geometry) and reused.

Files are ``<cache_dir>/<key>.pt`` dicts of tensors written atomically (``franca_core.checkpoint``) and read
with ``weights_only=True``. The key is the sha256 of the model's weights digest and the set's ``identity()``, so a
changed checkpoint, file, row subset or resolution never reuses stale features.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from franca_core.checkpoint import load_checkpoint, save_checkpoint
from franca_core.eval.data import EvalSet
from franca_core.eval.features import extract_eval_features

CACHE_VERSION = 1


def model_digest(model: nn.Module) -> str:
    """sha256 over every state-dict tensor (name, dtype, shape, bytes) in key order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(digest: str, evalset: EvalSet, keep_patches: bool) -> str:
    """The cache file stem of one (model, set, geometry, patch-grid flag)."""
    data = {"v": CACHE_VERSION, "model": digest, "set": evalset.identity(), "patches": keep_patches}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]


def cached_features(model: nn.Module, evalset: EvalSet, cache_dir: str | Path | None, batch_size: int = 256,
                    keep_patches: bool = False, digest: str | None = None,
                    info: dict[str, bool] | None = None) -> dict[str, torch.Tensor]:
    """``extract_eval_features`` through the cache (no cache when ``cache_dir`` is None).

    A cached entry with patch grids also serves a request without them. ``info["hit"]`` says whether the
    features came from the cache (so callers time only real extractions).
    """
    info = info if info is not None else {}
    info["hit"] = False
    if cache_dir is None:
        return extract_eval_features(model, evalset, batch_size, keep_patches)
    digest = digest or model_digest(model)
    cache_dir = Path(cache_dir)
    for flag in ([True] if keep_patches else [False, True]):
        path = cache_dir / f"{cache_key(digest, evalset, flag)}.pt"
        if path.is_file():
            info["hit"] = True
            return load_checkpoint(path)
    feats = extract_eval_features(model, evalset, batch_size, keep_patches)
    save_checkpoint(feats, cache_dir / f"{cache_key(digest, evalset, keep_patches)}.pt")
    return feats

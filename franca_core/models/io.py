"""Load a backbone from any Franca checkpoint, and save one (with its RASA matrix) as safetensors.

Two formats, both loaded without unpickling arbitrary objects (DESIGN.md "Storage"):

- a training checkpoint (``FrancaTrainer.state_dict()`` saved by ``franca_core.checkpoint``): ``torch.load(...,
  weights_only=True)``; the TEACHER backbone is used (FRANCA_METHOD.md: the run's model is the EMA teacher), its
  architecture comes from the stored ``config``; an optional ``rasa_matrix`` entry is honoured;
- an exported backbone (``save_backbone``): a safetensors file with ``backbone.*`` tensors, an optional
  ``rasa.matrix`` (D, D) and the ``ModelConfig`` as JSON in the header metadata.

Reference: ``timm/models/_builder.py`` (load + strict shape check) and DINOv2's ``hubconf.py`` (backbone-only files).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from franca_core.checkpoint import load_checkpoint
from franca_core.config import ModelConfig, TrainConfig
from franca_core.models.backbone import FrancaViT, build_backbone
from franca_core.models.rasa_backbone import RasaBackbone

FORMAT = "franca-backbone/1"
# Fields that fix the weights' shapes; img_size is left out because the position grid is interpolated anyway.
ARCH_FIELDS = ("embed_dim", "depth", "num_heads", "patch_size", "num_registers")


@dataclass
class LoadedBackbone:
    """A backbone read from a file: weights, architecture, optional RASA matrix (D, D)."""

    backbone: FrancaViT
    model_cfg: ModelConfig
    rasa_matrix: torch.Tensor | None
    source: str
    train_config: dict[str, Any] | None = None

    def model(self, with_rasa: bool = True) -> nn.Module:
        """The backbone, wrapped in ``RasaBackbone`` when a RASA matrix is present and wanted."""
        if with_rasa and self.rasa_matrix is not None:
            return RasaBackbone(self.backbone, self.rasa_matrix).eval()
        return self.backbone.eval()


def check_architecture(found: ModelConfig, expected: ModelConfig, source: str) -> None:
    """Raise one ``ValueError`` naming every architecture field that differs."""
    diffs = [f"{k}={getattr(found, k)} (expected {getattr(expected, k)})" for k in ARCH_FIELDS
             if getattr(found, k) != getattr(expected, k)]
    if diffs:
        raise ValueError(f"checkpoint {source} is of another architecture: {', '.join(diffs)}")


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _build_and_load(cfg: ModelConfig, state: dict[str, torch.Tensor], source: str) -> FrancaViT:
    backbone = build_backbone(cfg, drop_path=0.0)
    own = backbone.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        detail = "; ".join(part for part in (
            f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}" if missing else "",
            f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}" if unexpected else "",
            f"shape mismatch {shapes[:3]}" if shapes else "") if part)
        raise ValueError(f"checkpoint {source} does not match its stated architecture "
                         f"(embed_dim={cfg.embed_dim}, depth={cfg.depth}, patch_size={cfg.patch_size}): {detail}")
    backbone.load_state_dict(state)
    return backbone.eval()


def _model_cfg(data: Any, source: str) -> ModelConfig:
    try:
        if isinstance(data, dict) and "train" in data:  # a whole PipelineConfig dump
            data = data["train"]
        if isinstance(data, dict) and "model" in data:
            return TrainConfig.model_validate(data).model
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"checkpoint {source} holds no valid model config: {exc.errors()[0]['msg']}") from None


def load_backbone(path: str | Path, expected: ModelConfig | None = None,
                  model_cfg: ModelConfig | None = None) -> LoadedBackbone:
    """Read a training checkpoint (``.pt``) or an exported backbone (``.safetensors``).

    Args:
        path: the file.
        expected: when given, a checkpoint whose architecture differs raises ``ValueError`` naming the fields.
        model_cfg: the architecture of a plain safetensors file that carries none in its metadata (e.g. the
            pretrain stage's ``backbone.safetensors`` / ``teacher.safetensors`` beside ``train_config.json``).
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") == FORMAT and "model" in meta:
            cfg = _model_cfg(json.loads(meta["model"]), source)
        elif model_cfg is not None:
            cfg = model_cfg
        else:
            raise ValueError(f"{path} carries no architecture (metadata format={meta.get('format')!r}); "
                             "pass the model config it was trained with")
        train_config = json.loads(meta["train_config"]) if "train_config" in meta else None
        prefixed = any(k.startswith("backbone.") for k in tensors)
        state = (_strip(tensors, "backbone.") if prefixed
                 else {k: v for k, v in tensors.items() if not k.startswith("rasa.")})
        rasa = tensors.get("rasa.matrix")
    else:
        try:
            ckpt = load_checkpoint(path)
        except Exception as exc:  # weights_only refuses pickled objects; a corrupt file fails to unzip
            raise ValueError(f"{path} is not a loadable checkpoint: {exc}") from exc
        if not isinstance(ckpt, dict) or "teacher" not in ckpt or "config" not in ckpt:
            keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
            raise ValueError(f"{path} is not a Franca training checkpoint (needs 'teacher' and 'config'; has {keys})")
        cfg = _model_cfg(ckpt["config"], source)
        train_config = ckpt["config"]
        state, rasa = _strip(ckpt["teacher"], "backbone."), ckpt.get("rasa_matrix")
    if expected is not None:
        check_architecture(cfg, expected, source)
    return LoadedBackbone(_build_and_load(cfg, state, source), cfg, rasa, source, train_config)


def save_backbone(backbone: nn.Module, model_cfg: ModelConfig, path: str | Path,
                  rasa_matrix: torch.Tensor | None = None, metadata: dict[str, str] | None = None,
                  train_config: dict[str, Any] | None = None) -> Path:
    """Write ``backbone`` (a ``FrancaViT``; a ``RasaBackbone`` contributes its matrix) as safetensors, atomically."""
    if isinstance(backbone, RasaBackbone):
        rasa_matrix = backbone.rasa_matrix if rasa_matrix is None else rasa_matrix
        backbone = backbone.backbone
    tensors = {f"backbone.{k}": v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}
    if rasa_matrix is not None:
        tensors["rasa.matrix"] = rasa_matrix.detach().float().contiguous().cpu()
    meta = {"format": FORMAT, "model": json.dumps(model_cfg.model_dump(mode="json")), **(metadata or {})}
    if train_config is not None:
        meta["train_config"] = json.dumps(train_config)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

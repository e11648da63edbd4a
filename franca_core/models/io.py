"""Load a backbone from any Franca checkpoint, and save one (with its RASA matrix) as safetensors.

Two formats, both loaded without unpickling arbitrary objects (DESIGN.md "Storage"):

- a training checkpoint (``FrancaTrainer.state_dict()`` saved by ``franca_core.checkpoint``): ``torch.load(...,
  weights_only=True)``; the TEACHER backbone is used (FRANCA_METHOD.md: the run's model is the EMA teacher), its
  architecture comes from the stored ``config``; an optional ``rasa_matrix`` entry is honoured;
- an exported backbone (``save_backbone``): a safetensors file with ``backbone.*`` tensors, an optional
  ``rasa.matrix`` (D, D) and the ``ModelConfig`` as JSON in the header metadata (plus ``timm``: name and arguments,
  for a backbone that only timm can build, e.g. DINOv3's RoPE ViT);
- a backbone of another project (``.pth`` / ``.pt`` / ``.safetensors`` in the original key layout of DINOv2, Franca or
  DINOv3; ``franca_core.models.foreign``), or ``timm:<model name>:<weights file>`` (``load_model_spec``).

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
from franca_core.models.foreign import (
    TimmArch,
    TimmBackbone,
    detect_layout,
    dinov3_arch,
    franca_model_config,
    load_strict,
    timm_backbone,
    timm_model_config,
    to_franca_state,
    unwrap_state,
)
from franca_core.models.rasa_backbone import RasaBackbone

FORMAT = "franca-backbone/1"
# Fields that fix the weights' shapes; img_size is left out because the position grid is interpolated anyway.
ARCH_FIELDS = ("embed_dim", "depth", "num_heads", "patch_size", "num_registers", "ffn")
TIMM_PREFIX = "timm:"


@dataclass
class LoadedBackbone:
    """A backbone read from a file: weights, architecture, optional RASA matrix (D, D).

    ``network`` is a ``FrancaViT``, or a ``TimmBackbone`` (same ``forward_masked`` interface) for an architecture
    FrancaViT cannot represent (then ``timm_arch`` names it and ``model_cfg`` only summarises its sizes).
    """

    network: FrancaViT | TimmBackbone
    model_cfg: ModelConfig
    rasa_matrix: torch.Tensor | None
    source: str
    train_config: dict[str, Any] | None = None
    timm_arch: TimmArch | None = None
    layout: str = "franca"

    @property
    def backbone(self) -> FrancaViT:
        """The ``FrancaViT`` (training, high-res adaptation); a timm-only architecture raises naming it."""
        if not isinstance(self.network, FrancaViT):
            raise ValueError(f"{self.source} is a timm {self.network.arch.name} ({self.layout} layout), which "
                             "FrancaViT cannot represent: this step needs a DINOv2/Franca-family backbone")
        return self.network

    def model(self, with_rasa: bool = True) -> nn.Module:
        """The backbone, wrapped in ``RasaBackbone`` when a RASA matrix is present and wanted."""
        if with_rasa and self.rasa_matrix is not None:
            return RasaBackbone(self.network, self.rasa_matrix).eval()
        return self.network.eval()

    def random_init(self, seed: int) -> nn.Module:
        """The same architecture with fresh weights seeded by ``seed`` (the global random state is left as it was)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.timm_arch is not None:
                return timm_backbone(self.timm_arch, None, self.source)
            return build_backbone(self.model_cfg, drop_path=0.0).eval()


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
    load_strict(backbone, state, f"checkpoint {source}", f"its stated architecture (embed_dim={cfg.embed_dim}, "
                f"depth={cfg.depth}, patch_size={cfg.patch_size})")
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
        if meta.get("format") == FORMAT and "timm" in meta:
            arch = TimmArch(**json.loads(meta["timm"]))
            net = timm_backbone(arch, _strip(tensors, "backbone."), source, convert=False)
            return LoadedBackbone(net, timm_model_config(net), tensors.get("rasa.matrix"), source,
                                  json.loads(meta["train_config"]) if "train_config" in meta else None, arch,
                                  meta.get("layout", "timm"))
        if meta.get("format") == FORMAT and "model" in meta:
            cfg = _model_cfg(json.loads(meta["model"]), source)
        elif model_cfg is not None:
            cfg = model_cfg
        elif detect_layout(unwrap_state(tensors, source)) != "timm":
            return load_foreign(tensors, source, expected=expected)
        else:
            raise ValueError(f"{path} carries no architecture (metadata format={meta.get('format')!r}) and is in "
                             "no layout this project can size (DINOv2, Franca, DINOv3); pass the model config it "
                             f"was trained with, or name the timm model: timm:<model name>:{path}")
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
            try:
                return load_foreign(ckpt, source, expected=expected)
            except ValueError as exc:
                keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
                raise ValueError(f"{path} is not a Franca training checkpoint (needs 'teacher' and 'config'; has "
                                 f"{keys}) nor a backbone of a known layout: {exc}") from None
        cfg = _model_cfg(ckpt["config"], source)
        train_config = ckpt["config"]
        state, rasa = _strip(ckpt["teacher"], "backbone."), ckpt.get("rasa_matrix")
    if expected is not None:
        check_architecture(cfg, expected, source)
    return LoadedBackbone(_build_and_load(cfg, state, source), cfg, rasa, source, train_config)


def load_foreign(obj: Any, source: str, num_heads: int | None = None,
                 expected: ModelConfig | None = None) -> LoadedBackbone:
    """A backbone in the DINOv2 / Franca / DINOv3 (or this project's bare) key layout, architecture inferred."""
    state = unwrap_state(obj, source)
    layout = detect_layout(state)
    if layout == "dinov3":
        arch = dinov3_arch(state, source, num_heads)
        net = timm_backbone(arch, state, source)
        cfg = timm_model_config(net)
        if expected is not None:
            check_architecture(cfg, expected, source)
        return LoadedBackbone(net, cfg, None, source, None, arch, layout)
    if layout == "timm":
        raise ValueError(f"{source}: no DINOv2/Franca/DINOv3 keys (has {sorted(state)[:6]}); "
                         f"name its timm model: timm:<model name>:{source}")
    cfg = franca_model_config(state, source, num_heads)
    if expected is not None:
        check_architecture(cfg, expected, source)
    return LoadedBackbone(_build_and_load(cfg, to_franca_state(state, cfg), source), cfg, None, source, None,
                          None, layout)


def read_state(path: str | Path) -> Any:
    """A weights file's content without unpickling objects: safetensors tensors, or ``torch.load(weights_only)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    try:
        return load_checkpoint(path)
    except Exception as exc:  # weights_only refuses pickled objects; a corrupt file fails to unzip
        raise ValueError(f"{path} is not a loadable weights file: {exc}") from exc


def load_timm(name: str, weights: str | Path | None, source: str | None = None) -> LoadedBackbone:
    """``timm.create_model(name, pretrained=False)`` (dynamic image size where the model takes it) + ``weights``."""
    if not weights:
        raise ValueError(f"timm:{name} needs a weights file (timm:{name}:<file>); nothing is downloaded")
    state = unwrap_state(read_state(weights), str(weights))
    arch = TimmArch(name, {"dynamic_img_size": True})
    try:
        model = arch.build()
    except TypeError:  # a model without dynamic image size: fixed input size
        arch = TimmArch(name, {})
        model = arch.build()
    net = timm_backbone(arch, state, source or str(weights), model=model)
    return LoadedBackbone(net, timm_model_config(net), None, source or str(weights), None, arch, "timm")


def load_model_spec(spec: str | Path, num_heads: int | None = None, expected: ModelConfig | None = None
                    ) -> LoadedBackbone:
    """Any local model spec: a file of any layout ``load_backbone`` reads, or ``timm:<model name>:<weights file>``.

    ``num_heads`` sizes a DINOv2 / Franca / DINOv3 file whose head count is not the default (D / 64).
    """
    text = str(spec)
    if text.startswith(TIMM_PREFIX):
        name, _, weights = text[len(TIMM_PREFIX):].partition(":")
        loaded = load_timm(name, weights or None, text)
        if expected is not None:
            check_architecture(loaded.model_cfg, expected, text)
        return loaded
    if num_heads is not None:
        path = Path(text)
        obj = read_state(path)
        meta_format = None
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                meta_format = (f.metadata() or {}).get("format")
        franca_ckpt = isinstance(obj, dict) and "teacher" in obj and "config" in obj
        if meta_format != FORMAT and not franca_ckpt:
            return load_foreign(obj, text, num_heads, expected)
    return load_backbone(text, expected=expected)


def save_backbone(backbone: nn.Module, model_cfg: ModelConfig, path: str | Path,
                  rasa_matrix: torch.Tensor | None = None, metadata: dict[str, str] | None = None,
                  train_config: dict[str, Any] | None = None) -> Path:
    """Write ``backbone`` (a ``FrancaViT`` or ``TimmBackbone``; a ``RasaBackbone`` contributes its matrix) as
    safetensors, atomically."""
    if isinstance(backbone, RasaBackbone):
        rasa_matrix = backbone.rasa_matrix if rasa_matrix is None else rasa_matrix
        backbone = backbone.backbone
    meta = {"format": FORMAT, "model": json.dumps(model_cfg.model_dump(mode="json"))}
    if isinstance(backbone, TimmBackbone):
        meta["timm"] = json.dumps(backbone.arch.to_json())
        backbone = backbone.model
    tensors = {f"backbone.{k}": v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}
    if rasa_matrix is not None:
        tensors["rasa.matrix"] = rasa_matrix.detach().float().contiguous().cpu()
    meta.update(metadata or {})
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

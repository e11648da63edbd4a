"""Backbones in other projects' key layouts: DINOv2, Franca, DINOv3 and timm state dicts.

Layouts (read from the original repositories; the conversions are timm's own where timm has one):

- DINOv2 (``facebookresearch/dinov2``) and Franca (``valeoai/Franca``, the same ViT): ``cls_token``,
  ``pos_embed`` (1, 1 + N, D) (no position for the registers), ``register_tokens``, ``mask_token``,
  ``blocks.N.attn.qkv``, ``blocks.N.ls1.gamma``, ``mlp.fc1/fc2`` (GELU MLP) or ``mlp.w12/w3`` (fused SwiGLU), blocks
  possibly chunked for FSDP (``blocks.C.N.``, N the global index), inside a training checkpoint under ``teacher`` /
  ``model`` with ``teacher.`` / ``module.`` / ``backbone.`` prefixes. They load into ``FrancaViT`` (a timm
  VisionTransformer): ``timm.models.vision_transformer._convert_dinov2`` renames the SwiGLU weights and folds the CLS
  position into the CLS token when there are registers; the registers then get a zero position, as FrancaViT gives
  every prefix token one. At the checkpoint's own grid the features are DINOv2's; at other sizes timm's position
  interpolation (size-based bicubic) stands in for DINOv2's (scale factor with a 0.1 offset).
- DINOv3 (``facebookresearch/dinov3``): RoPE (``rope_embed.periods``), ``storage_tokens``, a K-masked QKV bias
  (``qkv.bias_mask``), untied norms on the 7B. FrancaViT has no RoPE, so it loads into timm's ``Eva`` built as
  ``vit_*_patch16_dinov3`` with the inferred sizes, through ``timm.models.eva.checkpoint_filter_fn``.
- timm: ``timm:<name>`` and a weights file: ``timm.create_model(name, pretrained=False)`` (never a download) and the
  model module's ``checkpoint_filter_fn`` when it has one (so an original-layout file also loads).

Eva and other timm models reach the project's consumers through ``TimmBackbone``, which gives them the
``forward_masked`` / ``patch_size`` / ``embed_dim`` interface of ``FrancaViT`` (CLS and patch tokens after the final
norm; registers dropped). The number of heads is not in DINOv2 / Franca weights: pass it, or the default is D / 64
(DINOv2 S/B/L/g), 32 at D = 4096; DINOv3 files give it by their RoPE periods (head_dim / 4 of them).
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import timm
import torch
from torch import nn

from franca_core.config import ModelConfig
from franca_core.models.backbone import Features, swiglu_hidden_dim

Layout = Literal["franca", "dinov2", "dinov3", "timm"]
StateDict = dict[str, torch.Tensor]


def default_heads(embed_dim: int) -> int:
    """Heads of the released DINOv2 / Franca / DINOv3 sizes (64-wide heads; 128 on DINOv3 7B)."""
    return 32 if embed_dim == 4096 else max(1, embed_dim // 64)


def unwrap_state(obj: Any, source: str) -> StateDict:
    """The backbone tensors of a checkpoint: the teacher of a training checkpoint, prefixes and chunks removed."""
    for key in ("teacher", "model_ema", "model", "state_dict", "module"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source} holds no state dict (found {type(obj).__name__})")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"{source} holds no tensors (keys {list(obj)[:8]})")
    # DINOv2 training checkpoints: teacher.backbone.*; Franca's: module.backbone.*
    for prefix in ("teacher.", "module.", "backbone.", "module."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    # chunked blocks (FSDP): blocks.<chunk>.<global index>. -> blocks.<global index>.
    return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}


def detect_layout(state: Mapping[str, torch.Tensor]) -> Layout:
    """Which family a backbone state dict is in (``timm``: none this module can size without a model name)."""
    if "storage_tokens" in state or any(k.startswith("rope_embed.") for k in state):
        return "dinov3"
    if "register_tokens" in state or any(".mlp.w12." in k for k in state):
        return "dinov2"
    if "mask_token" in state and "cls_token" in state and "pos_embed" in state:
        # ours (reg_token, a position per prefix token) or DINOv2 without registers (identical keys)
        return "franca" if "reg_token" in state else "dinov2"
    return "timm"


def _depth(state: Mapping[str, torch.Tensor]) -> int:
    return len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})


def _patch_size(state: Mapping[str, torch.Tensor], source: str) -> int:
    if "patch_embed.proj.weight" not in state:
        raise ValueError(f"{source} has no patch_embed.proj.weight: not a ViT backbone")
    h, w = state["patch_embed.proj.weight"].shape[-2:]
    if h != w:
        raise ValueError(f"{source} has non-square patches {h}x{w}")
    return int(h)


def franca_model_config(state: Mapping[str, torch.Tensor], source: str, num_heads: int | None = None) -> ModelConfig:
    """The ``ModelConfig`` of a DINOv2 / Franca / this project's backbone state dict (heads: given or default)."""
    missing = [k for k in ("cls_token", "pos_embed", "blocks.0.attn.qkv.weight") if k not in state]
    if missing:
        raise ValueError(f"{source} is not a DINOv2/Franca ViT (no {missing})")
    d, p = int(state["cls_token"].shape[-1]), _patch_size(state, source)
    regs = state.get("register_tokens", state.get("reg_token"))
    n_reg = int(regs.shape[1]) if regs is not None else 0
    prefix = 1 + (n_reg if "reg_token" in state else 0)  # ours gives registers a position, DINOv2 does not
    grid = math.isqrt(int(state["pos_embed"].shape[1]) - prefix)
    if grid * grid != state["pos_embed"].shape[1] - prefix:
        raise ValueError(f"{source}: pos_embed {tuple(state['pos_embed'].shape)} is not a square grid")
    if "blocks.0.mlp.w12.weight" in state:
        ffn, hidden = "swiglu", int(state["blocks.0.mlp.w12.weight"].shape[0]) // 2
    elif "blocks.0.mlp.fc1.weight" in state:
        fc1, fc2 = state["blocks.0.mlp.fc1.weight"], state["blocks.0.mlp.fc2.weight"]
        packed = fc1.shape[0] == 2 * fc2.shape[1]  # timm's SwiGLUPacked (ours) vs a GELU MLP
        ffn, hidden = ("swiglu", int(fc2.shape[1])) if packed else ("mlp", int(fc1.shape[0]))
    else:
        raise ValueError(f"{source}: block 0 has neither mlp.fc1 (MLP) nor mlp.w12 (SwiGLU)")
    want = swiglu_hidden_dim(d) if ffn == "swiglu" else 4 * d
    if hidden != want:
        raise ValueError(f"{source}: {ffn} FFN width {hidden} at embed_dim {d}; FrancaViT builds {want} "
                         "(load it with timm:<model name> instead)")
    heads = num_heads or default_heads(d)
    if d % heads:
        raise ValueError(f"{source}: embed_dim {d} is not divisible by {heads} heads (pass the number of heads)")
    return ModelConfig(embed_dim=d, depth=_depth(state), num_heads=heads, patch_size=p, img_size=grid * p,
                       num_registers=n_reg, layerscale_init=1e-5 if "blocks.0.ls1.gamma" in state else 0.0,
                       ffn=ffn, drop_path=0.0)


def to_franca_state(state: Mapping[str, torch.Tensor], cfg: ModelConfig) -> StateDict:
    """A DINOv2 / Franca state dict in ``FrancaViT``'s keys (ours passes through)."""
    from timm.models.vision_transformer import _convert_dinov2

    state = dict(state)
    if "reg_token" in state:  # already this project's / timm's layout
        return state
    mask = state.get("mask_token", torch.zeros(1, cfg.embed_dim))
    out = _convert_dinov2(state, None)  # type: ignore[arg-type]  # (the model argument is unused)
    if "reg_token" in out:  # timm folded the CLS position into the CLS token; FrancaViT has a position per prefix
        pos = out["pos_embed"]
        out["pos_embed"] = torch.cat([pos.new_zeros(1, 1 + cfg.num_registers, pos.shape[-1]), pos], dim=1)
    out["mask_token"] = mask.reshape(1, cfg.embed_dim)
    return out


@dataclass(frozen=True)
class TimmArch:
    """A timm model by registered name and the keyword arguments that size it."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        """The model with fresh weights (``pretrained=False``: nothing is downloaded)."""
        try:
            return timm.create_model(self.name, pretrained=False, **self.kwargs)
        except RuntimeError as exc:  # timm: "Unknown model (...)"
            raise ValueError(f"timm has no model {self.name!r} ({exc})") from None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": self.kwargs}


def dinov3_arch(state: Mapping[str, torch.Tensor], source: str, num_heads: int | None = None) -> TimmArch:
    """timm's DINOv3 ``Eva`` sized from a DINOv3 state dict."""
    if "cls_token" not in state:
        raise ValueError(f"{source} is not a DINOv3 ViT (no cls_token)")
    d = int(state["cls_token"].shape[-1])
    periods = state.get("rope_embed.periods")
    if num_heads is None and periods is not None and d % (4 * periods.numel()) == 0:
        num_heads = d // (4 * periods.numel())  # RoPE keeps head_dim / 4 periods: the heads are in the weights
    heads = num_heads or default_heads(d)
    if d % heads:
        raise ValueError(f"{source}: embed_dim {d} is not divisible by {heads} heads (pass the number of heads)")
    regs = state.get("storage_tokens")
    kwargs: dict[str, Any] = {"embed_dim": d, "depth": _depth(state), "num_heads": heads,
                              "patch_size": _patch_size(state, source), "img_size": 224,
                              "num_reg_tokens": int(regs.shape[1]) if regs is not None else 0,
                              "init_values": 1e-5 if "blocks.0.ls1.gamma" in state else None}
    if "blocks.0.mlp.w1.weight" in state:  # SwiGLU: timm's SwiGLU takes the width as is (align 1 = no rounding)
        hidden = int(state["blocks.0.mlp.w1.weight"].shape[0])
        kwargs.update(swiglu_mlp=True, swiglu_align_to=1)
    elif "blocks.0.mlp.fc1.weight" in state:
        hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0])
    else:
        raise ValueError(f"{source}: block 0 has neither mlp.fc1 (MLP) nor mlp.w1/w2/w3 (SwiGLU)")
    kwargs["mlp_ratio"] = (hidden + 0.5) / d  # int(d * ratio) == hidden
    name = "vit_small_patch16_dinov3" + ("_qkvb" if "blocks.0.attn.qkv.bias" in state else "")
    return TimmArch(name, kwargs)


def check_rope_periods(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """DINOv3 stores its RoPE periods; timm recomputes them (base 100): a checkpoint with others cannot load."""
    theirs, ours = state.get("rope_embed.periods"), getattr(getattr(model, "rope", None), "periods", None)
    if isinstance(theirs, torch.Tensor) and isinstance(ours, torch.Tensor) and (
            theirs.shape != ours.shape or not torch.allclose(theirs.float(), ours.float(), rtol=1e-4)):
        raise ValueError(f"{source}: RoPE periods {theirs.flatten()[:3].tolist()}... differ from timm's DINOv3 "
                         f"schedule {ours.flatten()[:3].tolist()}... (another rope base or period range)")


def timm_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> StateDict:
    """``state`` through the model module's own ``checkpoint_filter_fn`` (timm's converters), when it has one."""
    module = sys.modules.get(type(model).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    return dict(filter_fn(dict(state), model)) if callable(filter_fn) else dict(state)


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str, what: str) -> None:
    """``load_state_dict(strict=True)`` with one error naming the missing / unexpected / mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        detail = "; ".join(part for part in (
            f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}" if missing else "",
            f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}" if unexpected else "",
            f"shape mismatch {shapes[:3]}" if shapes else "") if part)
        raise ValueError(f"{source} does not fit {what}: {detail}")
    model.load_state_dict(dict(state))


class TimmBackbone(nn.Module):
    """A timm ViT (``forward_features`` -> (B, prefix + N, D) after the final norm) as the project's backbones.

    ``forward_masked(x)`` returns ``{"cls": (B, D), "patch": (B, N, D)}`` (registers / storage tokens dropped);
    masked forwards need a mask token in the patch embedding, which only ``FrancaViT`` has.
    """

    def __init__(self, model: nn.Module, arch: TimmArch) -> None:
        super().__init__()
        if getattr(model, "cls_token", None) is None or not hasattr(model, "forward_features"):
            raise ValueError(f"timm model {arch.name} has no CLS token / forward_features; it cannot serve as a "
                             "backbone here")
        self.model = model
        self.arch = arch
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))

    @property
    def patch_size(self) -> int:
        return int(self.model.patch_embed.patch_size[0])  # type: ignore[union-attr,index]

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)  # type: ignore[arg-type]

    def forward_masked(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> Features:
        if masks is not None:
            raise ValueError(f"timm model {self.arch.name} has no mask token: masked forwards need a FrancaViT")
        tokens = self.model.forward_features(x)  # type: ignore[operator]
        return {"cls": tokens[:, 0], "patch": tokens[:, self.num_prefix_tokens:]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised CLS token (B, D), as ``FrancaViT.forward``."""
        return self.forward_masked(x)["cls"]


def timm_backbone(arch: TimmArch, state: Mapping[str, torch.Tensor] | None, source: str, convert: bool = True,
                  model: nn.Module | None = None) -> TimmBackbone:
    """Build ``arch`` (or take ``model``, built from it) and load ``state`` into it, through timm's converter for
    that model unless ``convert`` is false (a state dict this project saved from the same model)."""
    model = arch.build() if model is None else model
    if state is not None:
        check_rope_periods(model, state, source)
        load_strict(model, timm_state(model, state) if convert else state, source,
                    f"timm {arch.name} {arch.kwargs or ''}".rstrip())
    return TimmBackbone(model.eval(), arch).eval()


def timm_model_config(backbone: TimmBackbone) -> ModelConfig:
    """A ``ModelConfig`` summarising a timm backbone's sizes (for patch sizes, checks and reports)."""
    m = backbone.model
    depth = len(m.blocks) if hasattr(m, "blocks") else 1  # type: ignore[arg-type]
    d, p = backbone.embed_dim, backbone.patch_size
    attn = getattr(m.blocks[0], "attn", None) if depth else None  # type: ignore[index]
    heads = int(getattr(attn, "num_heads", default_heads(d)))
    img = getattr(m.patch_embed, "img_size", None) or (224, 224)
    size = max(p, int(img[0]) // p * p)
    return ModelConfig(embed_dim=d, depth=depth, num_heads=heads if d % heads == 0 else 1, patch_size=p,
                       img_size=size, num_registers=backbone.num_prefix_tokens - 1, drop_path=0.0)

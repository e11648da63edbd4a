"""Export a backbone (+ RASA) for use outside this project: a timm state dict with its config, or an ONNX graph.

Both exports produce the features the registered model serves: the normalised CLS token (B, D) and the patch
tokens (B, N, D) after the final norm, with the RASA matrix applied to the patch tokens when the model has one.

- ``timm``: ``model.safetensors`` (timm's key layout; the mask token, used only in training, is left out),
  ``config.json`` with ``{"architecture", "kwargs", "pretrained_cfg", ...}`` such that
  ``timm.create_model(architecture, pretrained=False, **kwargs)`` + ``load_state_dict`` gives the same
  ``forward_features``; the RASA matrix (not a timm part) goes to ``rasa.safetensors`` beside it.
  timm's ``vit_giant_patch14_dinov2`` entry is the one that carries DINOv2's SwiGLU FFN (``SwiGLUPacked``, SiLU),
  which JSON cannot name (``vit_base_patch14_dinov2`` for the GELU MLP); every size field is overridden by the
  kwargs, so the name says only which FFN it is. A backbone that only timm builds (DINOv3) keeps its timm name.
- ``onnx``: ``torch.onnx.export`` (the dynamo exporter) of ``FeatureModel``: input ``images`` (B, 3, H, W) float32
  normalised with the ImageNet mean/std, outputs ``cls`` and ``patch``; the batch is dynamic, H and W are fixed at
  export. ``check_onnx`` runs it with onnxruntime and returns the largest absolute difference to torch.

Reference: ``timm/models/vision_transformer.py`` (``vit_giant_patch14_dinov2``, ``forward_features``) and the
PyTorch ONNX exporter docs (``torch.onnx.export(..., dynamo=True, dynamic_shapes=...)``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from franca_core.data.multicrop import IMAGENET_MEAN, IMAGENET_STD
from franca_core.models.backbone import FrancaViT, swiglu_hidden_dim
from franca_core.models.io import LoadedBackbone
from franca_core.rasa import apply_projection

FORMATS = ("timm", "onnx")
TIMM_ARCHITECTURE = "vit_giant_patch14_dinov2"  # SwiGLUPacked + SiLU
TIMM_MLP_ARCHITECTURE = "vit_base_patch14_dinov2"  # GELU MLP (DINOv2 ViT-S/B/L)
# Keys of FrancaViT that timm's VisionTransformer does not have (training-only).
TRAINING_ONLY_KEYS = ("mask_token",)


class FeatureModel(nn.Module):
    """``images -> (cls (B, D), patch (B, N, D))``: a backbone, with RASA on the patch tokens when given.

    ``backbone`` is anything with ``forward_masked`` and ``embed_dim`` (``FrancaViT``, or a timm-built backbone).
    ``dim`` keeps the first ``dim`` feature dimensions (Matryoshka); it truncates after RASA, so the patch tokens
    are the first ``dim`` dimensions of the RASA-projected tokens.
    """

    rasa_matrix: torch.Tensor | None

    def __init__(self, backbone: nn.Module, rasa_matrix: torch.Tensor | None = None, dim: int | None = None) -> None:
        super().__init__()
        d = int(getattr(backbone, "embed_dim"))  # noqa: B009  # a property on some backbones, a plain int on others
        if rasa_matrix is not None and tuple(rasa_matrix.shape) != (d, d):
            raise ValueError(f"RASA matrix has shape {tuple(rasa_matrix.shape)}; the backbone needs ({d}, {d})")
        check_dim(dim, d)
        self.backbone, self.dim, self.embed_dim = backbone.eval(), dim, d
        self.register_buffer("rasa_matrix", None if rasa_matrix is None else rasa_matrix.detach().clone().float())

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.backbone.forward_masked(images)  # type: ignore[operator]
        cls, patch = out["cls"], out["patch"]
        if self.rasa_matrix is not None:
            patch = apply_projection(patch, self.rasa_matrix)
        if self.dim is not None:
            cls, patch = cls[..., : self.dim], patch[..., : self.dim]
        return cls, patch


def check_dim(dim: int | None, embed_dim: int) -> None:
    """A Matryoshka dimension must be in 1..D."""
    if dim is not None and not 1 <= dim <= embed_dim:
        raise ValueError(f"dim={dim} is out of range: the model's features have {embed_dim} dimensions (1..D)")


def feature_model(loaded: LoadedBackbone, dim: int | None = None, with_rasa: bool = True) -> FeatureModel:
    """The ``FeatureModel`` of a loaded backbone (its RASA matrix applied when present and wanted)."""
    return FeatureModel(loaded.model(with_rasa=False), loaded.rasa_matrix if with_rasa else None, dim).eval()


def example_images(model_cfg: Any, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A deterministic normalised batch (B, 3, S, S) at the model's image size, for checks and examples."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, model_cfg.img_size, model_cfg.img_size, generator=g)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ------------------------------------------------------------------------------------------------- timm
def _timm_parts(loaded: LoadedBackbone) -> tuple[str, dict[str, Any], nn.Module, int]:
    """(timm model name, kwargs, the module whose state dict timm loads, number of prefix tokens)."""
    net = loaded.model(with_rasa=False)
    arch, inner = getattr(net, "arch", None), getattr(net, "model", None)
    if arch is not None and isinstance(inner, nn.Module):  # already a timm model (e.g. DINOv3)
        return str(arch.name), dict(arch.kwargs), inner, int(getattr(net, "num_prefix_tokens", 1))
    if not isinstance(net, FrancaViT):
        raise ValueError(f"{loaded.source}: a {type(net).__name__} has no timm export")
    cfg, d = loaded.model_cfg, loaded.model_cfg.embed_dim
    fc1 = net.get_submodule("blocks.0.mlp.fc1")
    hidden = int(fc1.out_features) if isinstance(fc1, nn.Linear) else -1
    swiglu = getattr(cfg, "ffn", "swiglu") == "swiglu"
    if swiglu and hidden != 2 * swiglu_hidden_dim(d):
        raise ValueError(f"{loaded.source}: FFN width {hidden} is not DINOv2's SwiGLU width for D={d}")
    # timm sizes the FFN as int(D * mlp_ratio); half a unit above keeps int() off a rounding edge
    kwargs = {"img_size": cfg.img_size, "patch_size": cfg.patch_size, "embed_dim": d, "depth": cfg.depth,
              "num_heads": cfg.num_heads, "mlp_ratio": (hidden + 0.5) / d, "init_values": cfg.layerscale_init,
              "reg_tokens": cfg.num_registers, "no_embed_class": False, "class_token": True, "qkv_bias": True,
              "num_classes": 0, "dynamic_img_size": True}
    return (TIMM_ARCHITECTURE if swiglu else TIMM_MLP_ARCHITECTURE), kwargs, net, int(net.num_prefix_tokens)


def timm_config(loaded: LoadedBackbone) -> dict[str, Any]:
    """``{"architecture", "kwargs", "pretrained_cfg", "num_prefix_tokens", "rasa"}`` for ``timm.create_model``."""
    name, kwargs, _, prefix = _timm_parts(loaded)
    size = loaded.model_cfg.img_size
    pretrained_cfg = {"architecture": name, "num_classes": 0, "input_size": [3, size, size],
                      "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "interpolation": "bicubic",
                      "crop_pct": 1.0}
    return {"architecture": name, "kwargs": kwargs, "pretrained_cfg": pretrained_cfg, "num_prefix_tokens": prefix,
            "rasa": loaded.rasa_matrix is not None,
            "features": "forward_features(x): tokens after the final norm; CLS = [:, 0], "
                        "patch = [:, num_prefix_tokens:]; with rasa, patch @ rasa.safetensors['rasa.matrix']"}


def export_timm(loaded: LoadedBackbone, out: str | Path) -> dict[str, Path]:
    """Write ``model.safetensors``, ``config.json`` (and ``rasa.safetensors``) into the folder ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = timm_config(loaded)
    state = {k: v.detach().contiguous().cpu() for k, v in _timm_parts(loaded)[2].state_dict().items()
             if k not in TRAINING_ONLY_KEYS}
    files = {"weights": out / "model.safetensors", "config": out / "config.json"}
    save_file(state, str(files["weights"]), metadata={"format": "pt", "architecture": config["architecture"]})
    files["config"].write_text(json.dumps(config, indent=1))
    if loaded.rasa_matrix is not None:
        files["rasa"] = out / "rasa.safetensors"
        save_file({"rasa.matrix": loaded.rasa_matrix.detach().float().contiguous().cpu()}, str(files["rasa"]))
    return files


def load_timm(folder: str | Path) -> tuple[nn.Module, dict[str, Any], torch.Tensor | None]:
    """(timm model, its config, RASA matrix or None) from an ``export_timm`` folder, as a timm user would."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    model = timm.create_model(config["architecture"], pretrained=False, **config["kwargs"])
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    rasa = load_file(str(folder / "rasa.safetensors"))["rasa.matrix"] if config.get("rasa") else None
    return model.eval(), config, rasa


# ------------------------------------------------------------------------------------------------- onnx
def export_onnx(loaded: LoadedBackbone, out: str | Path, img_size: int | None = None,
                with_rasa: bool = True) -> Path:
    """``FeatureModel`` as ONNX (dynamic batch, fixed ``img_size``, default the model's); returns the file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = feature_model(loaded, with_rasa=with_rasa)
    size = img_size or loaded.model_cfg.img_size
    if size % loaded.model_cfg.patch_size:
        raise ValueError(f"img_size {size} is not a multiple of the patch size {loaded.model_cfg.patch_size}")
    example = torch.zeros(2, 3, size, size)
    with torch.no_grad():
        torch.onnx.export(model, (example,), str(out), input_names=["images"], output_names=["cls", "patch"],
                          dynamo=True, dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                          external_data=False, verbose=False)
    return out


def check_onnx(onnx_file: str | Path, loaded: LoadedBackbone, images: torch.Tensor,
               with_rasa: bool = True) -> dict[str, float]:
    """Run the ONNX graph with onnxruntime on ``images``; ``{"cls", "patch", "max"}`` max absolute differences."""
    import onnxruntime as ort  # type: ignore[import-untyped]  # no py.typed

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = session.run(["cls", "patch"], {"images": images.float().numpy()})
    with torch.no_grad():
        want = feature_model(loaded, with_rasa=with_rasa)(images.float())
    diffs = {name: float((torch.from_numpy(g) - w).abs().max()) for name, g, w in zip(("cls", "patch"), got, want)}
    return {**diffs, "max": max(diffs.values())}

"""The registered model as an MLflow pyfunc: images in, CLS and patch features out (RASA on the patch tokens).

``mlflow.pyfunc.load_model("models:/franca-<profile>@candidate").predict(images, params={"dim": 96})``:

- input: float32 ``(N, 3, H, W)`` images, normalised with the ImageNet mean/std (as the evaluation feeds them:
  ``franca_core.data.multicrop``), H and W multiples of the patch size (any size: the position grid is interpolated);
- output: ``{"cls": (N, dim), "patch": (N, H/p * W/p, dim)}`` float32; the patch tokens carry the RASA projection;
- params: ``dim`` keeps the first ``dim`` dimensions (Matryoshka; default D, the whole feature), ``batch_size``
  the forward batch.

The model is logged "from code" (``PYFUNC_CODE``, a file that only names ``FrancaFeatures``), so loading it
unpickles nothing: the weights are one safetensors artifact (``franca_core.models.io`` format, RASA matrix
included). Loading needs this project installed (``pip install -e .``) in the loading environment; the pinned
``pip_requirements`` come from ``requirements.lock``, so saving never resolves requirements over the network.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

from franca_core.config import ModelConfig
from franca_core.export import FeatureModel, check_dim, example_images
from franca_core.models.io import load_backbone

PYFUNC_CODE = Path(__file__).with_name("pyfunc_entry.py")
WEIGHTS = "backbone"  # the artifact key of the safetensors file
LOCK = Path(__file__).resolve().parents[2] / "requirements.lock"
# What the model's code imports (franca_core's backbone and loader); pinned from the lock file.
REQUIREMENTS = ("mlflow", "torch", "torchvision", "timm", "safetensors", "numpy", "pydantic", "pyyaml")


class FrancaFeatures(PythonModel):
    """The pyfunc wrapper: ``load_context`` reads the safetensors artifact, ``predict`` runs ``FeatureModel``."""

    def load_context(self, context: Any) -> None:
        loaded = load_backbone(context.artifacts[WEIGHTS])
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = FeatureModel(loaded.model(with_rasa=False), loaded.rasa_matrix).to(self.device).eval()
        self.embed_dim, self.patch_size = loaded.model_cfg.embed_dim, loaded.model_cfg.patch_size

    # Unannotated on purpose: MLflow reads predict's type hints as a schema and would override the tensor signature.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        params = params or {}
        dim = int(params.get("dim") or self.embed_dim)
        batch = max(1, int(params.get("batch_size") or 32))
        check_dim(dim, self.embed_dim)
        images = torch.as_tensor(np.asarray(model_input))
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.float32:
            raise ValueError(f"expected float32 images (N, 3, H, W) normalised with the ImageNet mean/std; got "
                             f"{images.dtype} {tuple(images.shape)}")
        if images.shape[2] % self.patch_size or images.shape[3] % self.patch_size:
            raise ValueError(f"image size {tuple(images.shape[2:])} is not a multiple of the patch size "
                             f"{self.patch_size}")
        cls, patch = [], []
        with torch.inference_mode():
            for chunk in images.split(batch):
                c, p = self.model(chunk.to(self.device))
                cls.append(c[..., :dim].float().cpu())
                patch.append(p[..., :dim].float().cpu())
        return {"cls": torch.cat(cls).numpy(), "patch": torch.cat(patch).numpy()}


def signature(model_cfg: ModelConfig) -> ModelSignature:
    """Tensor specs of the input and the two outputs, and the ``dim`` / ``batch_size`` params."""
    f32 = np.dtype(np.float32)
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, (-1, 3, -1, -1))]),
        outputs=Schema([TensorSpec(f32, (-1, -1), "cls"), TensorSpec(f32, (-1, -1, -1), "patch")]),
        params=ParamSchema([ParamSpec("dim", "integer", model_cfg.embed_dim),
                            ParamSpec("batch_size", "integer", 32)]),
    )


def input_example(model_cfg: ModelConfig) -> np.ndarray:
    """One normalised image of 2 x 2 patches: small enough to store as JSON, any size works."""
    small = model_cfg.model_copy(update={"img_size": 2 * model_cfg.patch_size})
    return example_images(small, batch=1).numpy()


def pip_requirements() -> list[str]:
    """``name==version`` of ``REQUIREMENTS`` from ``requirements.lock`` (installed versions where it is absent)."""
    pins: dict[str, str] = {}
    if LOCK.is_file():
        for line in LOCK.read_text().splitlines():
            if m := re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;#]+)", line.strip()):
                pins[m.group(1).lower().replace("_", "-")] = m.group(3)
    out = []
    for name in REQUIREMENTS:
        version = pins.get(name) or metadata.version(name)
        out.append(f"{name}=={version}")
    return out


def save_pyfunc(path: str | Path, weights: str | Path, model_cfg: ModelConfig) -> Path:
    """Write the pyfunc model folder (``MLmodel``, code, the weights artifact, signature, example) at ``path``."""
    mlflow.pyfunc.save_model(
        path=str(path), python_model=str(PYFUNC_CODE), artifacts={WEIGHTS: str(weights)},
        signature=signature(model_cfg), input_example=input_example(model_cfg),
        pip_requirements=pip_requirements(),
        metadata={"franca.features": "cls (N, D) and RASA patch tokens (N, HW/p^2, D); params dim, batch_size",
                  "franca.input": "float32 (N, 3, H, W), ImageNet mean/std normalised, H and W multiples of "
                                  f"patch_size={model_cfg.patch_size}"})
    return Path(path)


def weights_file(model_dir: str | Path) -> Path:
    """The safetensors artifact inside a downloaded model folder (what ``save_pyfunc`` put under ``artifacts/``)."""
    from mlflow.models import Model

    folder = Path(model_dir)
    if not (folder / "MLmodel").is_file():
        raise ValueError(f"{folder} holds no MLmodel: not a model logged by the register stage")
    artifacts = Model.load(str(folder)).flavors.get("python_function", {}).get("artifacts", {})
    if WEIGHTS not in artifacts:
        raise ValueError(f"the model in {folder} has no {WEIGHTS!r} artifact (has {sorted(artifacts)}); it was not "
                         "logged by this project's register stage")
    return folder / artifacts[WEIGHTS]["path"]

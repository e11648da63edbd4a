"""One ViT-B/14 Franca step in bf16 agrees with the same step in fp32 (issue 19; CUDA only, marked ``gpu``).

The paper's geometry: ViT-B/14 with the profile's heads (K = 131,072 at the full dimension, 5 Matryoshka levels), 2
global crops at 224 px and 8 local crops at 98 px, CyclicMask. The reference is true float32 (matmul precision
"highest"); the bf16 step is what training runs (autocast bf16, TF32 for what stays float32). The tolerances are
about 30x what the same comparison gave on a CPU with native bf16 (AVX512-BF16, batch 2): losses within 1.5e-4 to
2.3e-4 relative, gradient cosines 0.99997 (backbone) and above 0.9999 (heads).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from franca_core.config import TrainConfig, load_config
from franca_core.data.collate import MultiCropCollate
from franca_core.data.multicrop import MultiCropAugmentation
from franca_core.data.synthetic import iter_images
from franca_core.train.trainer import Batch, FrancaTrainer

pytestmark = pytest.mark.gpu

BATCH = 4
LOSS_RTOL = 5e-3  # |bf16 - fp32| / |fp32| of the DINO, iBOT and total losses
GRAD_COSINE = 0.995  # cosine between the bf16 and fp32 gradients of each module


def vitb14(precision: str, batch: int = BATCH) -> TrainConfig:
    """The vitb14 profile's train section at ``batch`` images and ``precision``."""
    return load_config("vitb14", [f"train.precision={precision}", f"train.optim.batch_size={batch}"]).train


def multicrop_batch(cfg: TrainConfig, seed: int = 0) -> Batch:
    """One collated multi-crop batch of generated 256 px images (crops and masks seeded)."""
    torch.manual_seed(seed)
    aug, gen = MultiCropAugmentation(cfg.crops), torch.Generator().manual_seed(seed)
    images = [im for im, _, _ in iter_images(cfg.optim.batch_size, seed=seed, size=256)]
    return MultiCropCollate(cfg.masking, cfg.model.patch_size, gen)([aug(im) for im in images])


def one_step(cfg: TrainConfig, batch: Batch, device: torch.device, matmul: str) -> tuple[dict[str, float],
                                                                                          dict[str, torch.Tensor]]:
    """The metrics and per-module gradients (flattened, float32, on the CPU) of the first step of a seeded run."""
    torch.manual_seed(0)
    trainer = FrancaTrainer(cfg).to(device)
    torch.set_float32_matmul_precision(matmul)  # after .to(), which turns TF32 on for CUDA
    torch.manual_seed(1)  # the same drop path in both runs
    metrics = trainer.train_step({k: v.to(device) for k, v in batch.items()})
    core = trainer.student_core
    modules: dict[str, nn.Module] = {"backbone": core.backbone, "dino_head": core.dino_head,
                                     "ibot_head": core.ibot_head}
    grads = {name: torch.cat([p.grad.flatten().float().cpu() for p in m.parameters() if p.grad is not None])
             for name, m in modules.items()}
    metrics["bf16"] = float(trainer.precision == "bf16")
    return metrics, grads


def compare(fp32: tuple[dict[str, float], dict[str, torch.Tensor]],
            bf16: tuple[dict[str, float], dict[str, torch.Tensor]]) -> dict[str, float]:
    """Relative loss differences and gradient cosines of two ``one_step`` results."""
    out = {f"{k}_rel": abs(bf16[0][k] - fp32[0][k]) / abs(fp32[0][k]) for k in ("loss", "dino", "ibot")}
    for name, grad in fp32[1].items():
        # float64: a float32 dot product over the heads' 10^8 entries drifts above 1
        out[f"{name}_cos"] = float(torch.nn.functional.cosine_similarity(grad.double(), bf16[1][name].double(), dim=0))
    return out


@pytest.fixture
def matmul_precision() -> Iterator[None]:
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


def test_train_step__vitb14_bf16_agrees_with_fp32(matmul_precision: None) -> None:
    device = torch.device("cuda")
    batch = multicrop_batch(vitb14("fp32"))
    assert batch["global_crops"].shape[-1] == 224 and batch["local_crops"].shape[0] == 8 * BATCH
    fp32 = one_step(vitb14("fp32"), batch, device, "highest")
    bf16 = one_step(vitb14("bf16"), batch, device, "high")
    assert bf16[0]["bf16"] == 1.0 and fp32[0]["bf16"] == 0.0
    diffs = compare(fp32, bf16)
    for key, value in diffs.items():
        if key.endswith("_rel"):
            assert value <= LOSS_RTOL, f"bf16 {key} {value:.4f} > {LOSS_RTOL}: {diffs}"
        else:
            assert value >= GRAD_COSINE, f"bf16 gradient {key} {value:.4f} < {GRAD_COSINE}: {diffs}"



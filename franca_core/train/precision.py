"""Which dtype the forward passes run in: ``train.precision`` resolved against the hardware."""

from __future__ import annotations

from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]


def native_bf16(device: str) -> bool:
    """Whether ``device`` runs bfloat16 matmuls natively. Without it, autocast still runs them in bfloat16 but
    emulated: a CPU with AVX2 only ran the tiny step at 1.6 images/s in bf16 against 26.8 in fp32 (0.06x)."""
    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device == "cpu":
        # torch.cpu exposes these probes privately; a build without them gets fp32, the safe side.
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def resolve_precision(setting: str, device: str) -> Precision:
    """``auto`` is bf16 where ``device`` has native bfloat16 and fp32 elsewhere; ``fp32``/``bf16`` are kept as
    asked (an explicit bf16 on hardware without it is slow, not wrong)."""
    if setting == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if setting not in ("fp32", "bf16"):
        raise ValueError(f"train.precision must be auto, fp32 or bf16, got {setting!r}")
    return setting  # type: ignore[return-value]


def enable_tf32(device: torch.device) -> bool:
    """Let float32 matmuls on CUDA use TensorFloat-32 (``torch.set_float32_matmul_precision("high")``).

    Called where training starts on a device (``FrancaTrainer.to``), never at import: the flag is process-wide.
    TF32 keeps float32's range with a 10-bit mantissa; DINOv2 trains with it (``dinov2/train/train.py`` sets it at
    import), and on an A100/H100 a float32 matmul (an fp32 run, the fp32 parts of a bf16 one) runs several times
    faster. The legacy ``set_float32_matmul_precision`` rather than ``backends.cuda.matmul.fp32_precision``:
    mixing the two raises in torch 2.14, and torch.compile's inductor reads the legacy one. A CPU device changes
    nothing (the same call would also switch oneDNN's CPU matmuls to TF32 where supported).

    Returns:
        Whether TF32 was enabled (``device`` is a CUDA device).
    """
    if device.type != "cuda":
        return False
    torch.set_float32_matmul_precision("high")
    return True

"""Where the frozen backbone of RASA fitting and evaluation runs, and in which precision (``eval.device``).

``auto`` is the current CUDA device where this process sees one, else the CPU. On CUDA the forward passes run under
bfloat16 autocast where the GPU has it natively (``torch.cuda.is_bf16_supported()``); on the CPU they stay in
float32, so a CPU run's features are those of the float32 network. The protocols themselves (k-NN, probes, k-means,
the RASA regressors) run on the CPU on features moved back there.
"""

from __future__ import annotations

import torch
from torch import nn

from franca_core.train.precision import Precision, native_bf16

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(choice: str) -> torch.device:
    """``auto``: the current CUDA device where one is visible, else ``cpu``; ``cpu`` / ``cuda`` as asked.

    Raises:
        ValueError: an unknown choice, or ``cuda`` where this process sees no CUDA device.
    """
    if choice not in DEVICES:
        raise ValueError(f"eval.device must be one of {DEVICES}, got {choice!r}")
    if choice == "cpu" or (choice == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("eval.device is cuda but torch.cuda.is_available() is false here: run on a CUDA machine "
                         "(or with eval.num_gpus on a Ray cluster with GPUs), or set eval.device=auto|cpu")
    return torch.device("cuda", torch.cuda.current_device())


def module_device(module: nn.Module) -> torch.device:
    """Where ``module``'s weights are (the CPU for a module without parameters)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def inference_precision(device: torch.device) -> Precision:
    """bf16 on a CUDA device with native bfloat16, fp32 elsewhere (the CPU included: its outputs stay float32)."""
    return "bf16" if device.type == "cuda" and native_bf16("cuda") else "fp32"


def inference_autocast(device: torch.device) -> torch.autocast:
    """The forward passes' autocast on ``device`` (``inference_precision``); outputs are cast back by the callers."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=inference_precision(device) == "bf16")

"""Full-state checkpoints, written atomically and loaded without unpickling arbitrary objects.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts saved with ``torch.save`` and read with
``torch.load(weights_only=True)`` (nanoGPT's checkpoint dict plus RNG and data position). It is written to a
temporary name in the same folder and renamed, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

log = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch and (where this process has initialised CUDA) CUDA RNG states, weights_only-loadable.

    ``cuda`` holds ``torch.cuda.get_rng_state_all()``: one state per visible device. A process that never initialised
    CUDA has drawn nothing from those generators, so it saves none and does not initialise CUDA to ask.
    """
    # the global MT19937 state is the legacy tuple; numpy's stubs resolve a no-argument call to the dict overload
    np_state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    state: dict[str, Any] = {
        "python": list(random.getstate()[1]) + [random.getstate()[2]],
        "python_version": random.getstate()[0],
        "numpy": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by ``rng_state``.

    CUDA states are restored tolerantly, so a checkpoint moves between machines: a checkpoint without them (written
    on a CPU, or before this was saved) leaves the CUDA generators as they are; on a machine without CUDA they are
    ignored; with another device count, devices ``0..min(saved, visible) - 1`` get their saved state, the others keep
    theirs, and a warning says so (the resumed run then draws other random numbers on those devices).
    """
    py = state["python"]
    random.setstate((state["python_version"], tuple(int(v) for v in py[:-1]), py[-1]))
    np.random.set_state(("MT19937", state["numpy"].cpu().numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if not cuda_states or not torch.cuda.is_available():
        return
    visible = torch.cuda.device_count()
    if len(cuda_states) != visible:
        log.warning("checkpoint holds CUDA RNG states of %d devices, %d visible: restoring the first %d",
                    len(cuda_states), visible, min(len(cuda_states), visible))
    for device, cuda_state in enumerate(cuda_states[:visible]):
        torch.cuda.set_rng_state(cuda_state.cpu(), device)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; raises FileNotFoundError naming the path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)

"""Run a stage's compute in this process, or in a Ray task holding GPUs (``eval.num_gpus`` of RASA and evaluation).

With ``num_gpus`` 0 the function runs here. Otherwise it runs as ``ray.remote(num_gpus=...)`` on the Ray that
``ray_session`` attaches to (``RAY_ADDRESS``'s cluster, else a local Ray): Ray sets ``CUDA_VISIBLE_DEVICES`` in the
task, so ``eval.device=auto`` finds its GPU there. Arguments and results travel by Ray's object store (pickled), so
the function must be importable on the cluster's nodes and its results must not name files of the node it ran on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from tasks.common.ray_session import ray_session

T = TypeVar("T")


def run_with_gpus(fn: Callable[..., T], num_gpus: float, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` here (``num_gpus`` 0) or in a Ray task with ``num_gpus`` GPUs.

    Raises:
        RuntimeError: the Ray cluster offers fewer GPUs than asked (the task would wait for them forever).
    """
    if not num_gpus:
        return fn(*args, **kwargs)
    with ray_session():
        import ray

        offered = ray.cluster_resources().get("GPU", 0)
        if offered < num_gpus:
            raise RuntimeError(f"eval.num_gpus={num_gpus} but the Ray cluster offers {offered:g} GPU(s): run on a "
                               "cluster with GPUs (RAY_ADDRESS) or set eval.num_gpus=0 to run in the stage's process")
        task = ray.remote(num_gpus=num_gpus, max_retries=0)(fn)
        return ray.get(task.remote(*args, **kwargs))

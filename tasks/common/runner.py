"""Run one stage under its contract: key -> checked hit, or lock -> re-check -> compute -> publish.

Orchestrator-free (the Prefect glue in ``tasks.common.prefect`` and the tests both call ``run_stage``). A hit is
served only if its marker parses, every file it lists exists with the recorded size, the stage's own check passes
(e.g. the registered model version exists) and, when a tracker is given, the MLflow run it names exists in the
current tracking store. Anything else is recomputed under the (stage, key) lock, after checking again: another run
may have finished it while this one waited.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from franca_core.config import PipelineConfig
from tasks.common.contract import Stage, StageKey, load_stage
from tasks.common.digests import DigestMemo
from tasks.common.locks import stage_lock
from tasks.common.store import StageResult, StageStore, Workspace, open_store


class Tracker(Protocol):
    """What the runner needs from experiment tracking (``tasks.common.tracking.MlflowTracker``)."""

    parent_run_id: str

    def run_exists(self, run_id: str) -> bool: ...

    def stage_run(self, stage: Stage, cfg: PipelineConfig, key: StageKey,
                  inputs: Mapping[str, StageResult]) -> AbstractContextManager[str]: ...

    def log_result(self, cfg: PipelineConfig, result: StageResult) -> None: ...


def problem(store: StageStore, stage: Stage, result: StageResult | None, tracker: Tracker | None) -> str | None:
    """Why the output at a key cannot be served, or None when it can."""
    if result is None:
        return "no finished output (no marker, or one that does not parse)"
    if (why := store.problem(result)) is not None:
        return why
    if stage.check is not None and (why := stage.check(result)) is not None:
        return why
    if tracker is not None and not (result.run_id and tracker.run_exists(result.run_id)):
        return f"the MLflow run {result.run_id or '(none)'} that computed it is not in this tracking store"
    return None


def checked_hit(store: StageStore, stage: Stage, digest: str,
                tracker: Tracker | None) -> tuple[StageResult | None, str]:
    """(the served output, "") or (None, why it cannot be served)."""
    found = store.load(stage.name, digest)
    why = problem(store, stage, found, tracker)
    if why is None and found is not None:
        return found.model_copy(update={"cached": True}), ""
    return None, why or ""


@contextmanager
def _untracked(*_: Any) -> Iterator[str]:
    yield ""


def run_stage(stage: Stage | str, cfg: PipelineConfig, tracker: Tracker | None = None, memo: DigestMemo | None = None,
              log: Callable[[str], None] = print, **inputs: StageResult) -> StageResult:
    """Serve ``stage`` for ``cfg`` and its upstream ``inputs`` from the store, or compute and publish it."""
    stage = load_stage(stage) if isinstance(stage, str) else stage
    store = open_store(cfg.storage.root)
    key = stage.key(cfg, inputs, memo if memo is not None else DigestMemo())
    hit, why = checked_hit(store, stage, key.digest, tracker)
    if hit is not None:
        return hit

    def waiting(holder: dict[str, Any]) -> None:
        log(f"{stage.name}: another run (pid {holder.get('pid')} on {holder.get('host')}) is computing "
            f"{key.digest[:12]}; waiting for it")

    with stage_lock(store, stage.name, key.digest, on_wait=waiting):
        hit, why = checked_hit(store, stage, key.digest, tracker)
        if hit is not None:
            return hit
        if store.load(stage.name, key.digest) is not None:
            log(f"{stage.name}: not serving {key.digest[:12]}: {why}; recomputing")
            store.unpublish(stage.name, key.digest)
        opened = tracker.stage_run(stage, cfg, key, inputs) if tracker is not None else _untracked()
        with opened as run_id:
            ws = Workspace(store, stage.name, key.digest, run_id, tracker.parent_run_id if tracker else "", key.parts)
            result = stage.fn(stage.view(cfg), ws, **inputs)
            if result.stage != stage.name or result.input_digest != key.digest:
                raise RuntimeError(f"stage {stage.name!r} returned a result for {result.stage}/{result.input_digest}")
            result = result.model_copy(update={"run_id": run_id, "sizes": store.sizes(result), "recipe": key.parts,
                                               "cached": False})
            store.publish(result)
            scratch = store.scratch(stage.name, key.digest, "").rstrip("/")
            if store.fs.exists(scratch):
                store.fs.rm(scratch, recursive=True)
            if tracker is not None:
                tracker.log_result(cfg, result)
    return result

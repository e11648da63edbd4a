"""The stage contract: each stage declares once what it reads; its key, its folder and its view of the config follow.

    @stage("download", reads=("data.download",), inputs=("subset",), retried=True)
    def download(cfg: PipelineConfig, ws: Workspace, subset: StageResult) -> StageResult: ...

A declaration names the stage, the config fields it reads (``reads``; ``files``: those of them that name files or
folders), the fields it may read that do not change its output (``operational``), fields it reads only when a
boolean field is true (``when``), its upstream results by role (``inputs``) and a manual ``version`` for changes its
source cannot show. Its key (``Stage.key``) is the sha256 of:

- the values of the fields it reads (minus the operational ones);
- the content sha256 of every file or folder those fields name (never the path: an in-place rewrite is a new key);
- the code it runs (``code.code_digest``: its module and the project modules it imports, transitively);
- the key and output digest of each upstream result (so a change anywhere recomputes everything after it).

That key names the output folder ``<root>/<stage>/<key>/`` and is the Prefect cache key; nothing else computes a
stage identity. The stage function receives a ``ConfigView`` holding only what it declared: reading anything else
raises ``UndeclaredFieldError``, so the declaration cannot drift from the code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from pydantic import BaseModel

from franca_core.config import PipelineConfig
from tasks.common.code import code_digest
from tasks.common.digests import DigestMemo, content_digest, sha256_json
from tasks.common.store import StageResult

# ``data.source`` names a file or folder, or the generated corpus by this keyword.
NOT_A_PATH = frozenset({"synthetic"})
# A model spec ``timm:<model name>:<weights file>`` (``train.init_from``): the file's content is hashed, the name is in
# the config value.
TIMM_SPEC = "timm:"
STAGE_NAMES = ("source", "select", "download", "dedup", "pretrain", "highres", "rasa", "evaluate", "register")


class UndeclaredFieldError(LookupError):
    """A stage read a config field it does not declare."""


def field_value(cfg: BaseModel, dotted: str) -> Any:
    """The value at ``dotted`` (``"data.download.threads"``) as JSON-able data."""
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node.model_dump(mode="json") if isinstance(node, BaseModel) else node


def _drop(data: dict[str, Any], dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if rest and isinstance(data.get(head), dict):
        _drop(data[head], rest)
    elif not rest:
        data.pop(head, None)


class ConfigView:
    """Read access to the declared fields of a config, and only to them.

    A declared section comes back as the real, typed model (``view.data.download`` is a ``DownloadConfig``); a path
    leading to declared fields comes back as a narrower view; anything else raises ``UndeclaredFieldError``.
    """

    def __init__(self, node: BaseModel, allowed: frozenset[str], stage: str, prefix: str = "") -> None:
        self._node, self._allowed, self._stage, self._prefix = node, allowed, stage, prefix

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        path = f"{self._prefix}{name}"
        parts = path.split(".")
        if any(".".join(parts[:i]) in self._allowed for i in range(1, len(parts) + 1)):
            return getattr(self._node, name)
        if any(a.startswith(f"{path}.") for a in self._allowed):
            return ConfigView(getattr(self._node, name), self._allowed, self._stage, f"{path}.")
        raise UndeclaredFieldError(f"stage {self._stage!r} read config field {path!r}, which it does not declare "
                                   f"(declared: {sorted(self._allowed)}); add it to the stage's `reads`")

    def __repr__(self) -> str:
        return f"ConfigView({self._stage}: {sorted(self._allowed)})"


@dataclass(frozen=True)
class StageKey:
    """A stage's key and what it hashed (recorded in the output's marker as its recipe)."""

    digest: str
    parts: dict[str, Any]


@dataclass(frozen=True)
class Stage:
    """One stage's declaration (see the module docstring); ``fn(cfg_view, workspace, **inputs) -> StageResult``."""

    name: str
    fn: Callable[..., StageResult]
    reads: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    operational: tuple[str, ...] = ()
    when: Mapping[str, str] = field(default_factory=dict)  # field -> boolean field: read only when that is true
    version: str = "1"
    retried: bool = False  # transient failures possible (network, worker loss): the flow retries it
    check: Callable[[StageResult], str | None] | None = None  # an extra hit check beyond files and MLflow run
    module: str = field(default="")

    def __post_init__(self) -> None:
        undeclared = [f for f in self.files if not any(f == r or f.startswith(f"{r}.") for r in self.reads)]
        if undeclared:
            raise ValueError(f"stage {self.name!r}: file fields {undeclared} are not among its reads {self.reads}")
        unknown = [f for f in self.when if f not in self.reads]
        if unknown:
            raise ValueError(f"stage {self.name!r}: `when` names {unknown}, which are not among its reads")
        if not self.module:
            object.__setattr__(self, "module", self.fn.__module__)

    def view(self, cfg: PipelineConfig) -> PipelineConfig:
        """The config as this stage may see it (typed as the config: it answers the same attribute paths)."""
        return cast(PipelineConfig, ConfigView(cfg, frozenset(self.reads + self.operational), self.name))

    def key(self, cfg: PipelineConfig, inputs: Mapping[str, StageResult], memo: DigestMemo | None = None) -> StageKey:
        """The stage's key for this config and these upstream results.

        Raises:
            ValueError: an input role is missing or unexpected.
            FileNotFoundError: a file the config names does not exist (the message names the field).
        """
        if set(inputs) != set(self.inputs):
            raise ValueError(f"stage {self.name!r} takes inputs {list(self.inputs)}, got {sorted(inputs)}")
        off = [f for f, flag in self.when.items() if not field_value(cfg, flag)]
        active = lambda f: not any(f == o or f.startswith(f"{o}.") for o in off)  # noqa: E731
        config = {f: field_value(cfg, f) for f in self.reads if active(f)}
        for op in self.operational:
            head = next((r for r in self.reads if op.startswith(f"{r}.")), None)
            if head is not None and isinstance(config[head], dict):
                _drop(config[head], op[len(head) + 1:])
        parts = {"stage": self.name, "version": self.version, "code": code_digest(self.module), "config": config,
                 "files": {f: file_digests(f, field_value(cfg, f), memo) for f in self.files if active(f)},
                 "inputs": {role: {"stage": r.stage, "key": r.input_digest, "digest": r.digest}
                            for role, r in sorted(inputs.items())}}
        return StageKey(sha256_json(parts), parts)


def file_digests(name: str, value: Any, memo: DigestMemo | None) -> Any:
    """Content digests of the path(s) in a file field: a str, a list of them or a dict of them (None: nothing)."""
    if value is None or (isinstance(value, str) and (value in NOT_A_PATH or not value)):
        return None
    if isinstance(value, list):
        return [file_digests(name, v, memo) for v in value]
    if isinstance(value, dict):
        return {k: file_digests(f"{name}.{k}", v, memo) for k, v in sorted(value.items())}
    if isinstance(value, str) and value.startswith(TIMM_SPEC):
        return file_digests(name, value[len(TIMM_SPEC):].partition(":")[2], memo)
    try:
        return content_digest(str(value), memo)
    except FileNotFoundError:
        raise FileNotFoundError(f"config field {name} names {value!r}, which does not exist") from None


def stage(name: str, *, reads: tuple[str, ...], **declaration: Any) -> Callable[[Callable[..., StageResult]], Stage]:
    """Declare a stage function (see the module docstring)."""
    def wrap(fn: Callable[..., StageResult]) -> Stage:
        return Stage(name=name, fn=fn, reads=reads, **declaration)
    return wrap


def load_stage(name: str) -> Stage:
    """The declaration of a pipeline stage: ``tasks.<name>.<name>`` (imported on first use: torch, Ray...)."""
    if name not in STAGE_NAMES:
        raise ValueError(f"unknown stage {name!r}. Valid: {list(STAGE_NAMES)}")
    found = getattr(importlib.import_module(f"tasks.{name}"), name)
    if not isinstance(found, Stage):
        raise TypeError(f"tasks.{name}.{name} is not a declared stage (use @stage)")
    return found

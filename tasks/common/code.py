"""The code version of a stage: a digest of the project source it runs, found by following its imports.

A stage's code is its module and every project module (``franca_core``, ``tasks``, ``infra``) it imports,
transitively, including imports inside functions. Each module enters by its syntax tree without docstrings, so a
comment, a docstring or a reformat changes no key, while any change to what the code does recomputes the stage (and,
through its key, every stage after it). Two modules are left out on purpose: the config schema (the values a stage
reads enter its key directly, so a new default changes the key of exactly the stages that read it) and the contract
that computes keys (``EXCLUDED``).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
from pathlib import Path

PROJECT_PACKAGES = ("franca_core", "tasks", "infra")
EXCLUDED = frozenset({"franca_core.config", "tasks.common.contract", "tasks.common.code"})


@functools.cache
def _package_dir(top: str) -> Path | None:
    spec = importlib.util.find_spec(top)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return Path(locations[0]) if locations else None


def module_file(name: str) -> Path | None:
    """The source file of a project module on disk (None for a name that is not a module, e.g. a class).

    Found from the package's folder, not from ``sys.modules``: what counts is the source on disk.
    """
    top, *rest = name.split(".")
    base = _package_dir(top)
    if base is None:
        return None
    path = base.joinpath(*rest)
    for candidate in (path.with_suffix(".py") if rest else None, path / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def project_imports(name: str, tree: ast.Module, is_package: bool) -> set[str]:
    """Project modules imported anywhere in ``tree`` (packages, modules and ``from pkg import module``)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, name, is_package)
            candidates = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        else:
            continue
        for cand in candidates:
            if cand.split(".")[0] not in PROJECT_PACKAGES:
                continue
            parts = cand.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}  # a package's __init__ runs too
    return {m for m in found if module_file(m) is not None}


def _strip_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return tree


@functools.cache
def _module_digest(name: str) -> tuple[str, frozenset[str]]:
    """(sha256 of the module's docstring-free syntax tree, the project modules it imports)."""
    path = module_file(name)
    if path is None:
        raise ModuleNotFoundError(f"project module {name!r} has no source file")
    tree = ast.parse(path.read_text(), filename=str(path))
    imports = project_imports(name, tree, path.name == "__init__.py")
    dump = ast.dump(_strip_docstrings(tree), annotate_fields=False, include_attributes=False)
    return hashlib.sha256(dump.encode()).hexdigest(), frozenset(imports)


def code_modules(module: str) -> dict[str, str]:
    """``{module: digest}`` of a module and the project modules it imports, transitively (minus ``EXCLUDED``)."""
    seen: dict[str, str] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or name in EXCLUDED:
            continue
        digest, imports = _module_digest(name)
        seen[name] = digest
        todo.extend(sorted(imports - seen.keys()))
    return dict(sorted(seen.items()))


def code_digest(module: str) -> str:
    """The code version of a stage whose function lives in ``module`` (see the module docstring)."""
    return hashlib.sha256(repr(sorted(code_modules(module).items())).encode()).hexdigest()

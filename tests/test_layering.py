"""The layers point down only: franca_core is a library and never imports orchestration."""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

FORBIDDEN_IN_CORE = {"prefect", "ray", "mlflow", "tasks", "flows", "infra", "franca_cli"}
ROOT = Path(__file__).resolve().parents[1]


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_franca_core__imports_no_orchestration() -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(_imported_roots(p) & FORBIDDEN_IN_CORE)
                 for p in (ROOT / "franca_core").rglob("*.py")}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"franca_core must stay a library (PyTorch + timm): {offenders}"


def test_tasks__do_not_import_flows() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "tasks").rglob("*.py")
                 if {"flows", "franca_cli"} & _imported_roots(p)]
    assert not offenders, f"tasks/ must not import flows/ or the CLI: {offenders}"


STAGES = ("source", "select", "download", "dedup", "pretrain", "highres", "rasa", "evaluate", "register")


def test_tasks__shared_plumbing_never_imports_a_stage() -> None:
    stage_modules = {f"tasks.{s}" for s in STAGES} | {"tasks.download_worker", "tasks.download_server",
                                                       "tasks.download_guard", "tasks.download_ray",
                                                       "tasks.pretrain_loop", "tasks.metadata_parts"}
    offenders = {str(p.relative_to(ROOT)): sorted(_imported_modules(p) & stage_modules)
                 for p in (ROOT / "tasks" / "common").rglob("*.py")}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"tasks/common/ is below the stages (it loads them by name only): {offenders}"


def test_tasks__stage_modules_import_no_orchestrator_and_no_other_stage() -> None:
    offenders = {}
    for stage in STAGES:
        path = ROOT / "tasks" / f"{stage}.py"
        assert path.is_file(), f"every stage has a module named after it: {path} is missing"
        bad = {m for m in _imported_modules(path) if m.split(".")[0] in {"prefect", "flows", "franca_cli"}
               or m in {f"tasks.{s}" for s in STAGES if s != stage} or m == "tasks.common.prefect"}
        if bad:
            offenders[stage] = sorted(bad)
    assert not offenders, f"a stage module is plain code under its contract (no Prefect, no other stage): {offenders}"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path) -> set[str]:
    """Dotted names a file imports, at any depth (imports inside functions too); relative imports resolved.

    ``from pkg import name`` yields both ``pkg`` and ``pkg.name`` (``name`` may be a submodule).
    """
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            modules.add(module)
            modules |= {f"{module}.{alias.name}" for alias in node.names}
    return modules


def _find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``[]`` when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def _import_graph(package: str, node_of: Callable[[str], str | None]) -> dict[str, set[str]]:
    """Edges between the nodes that ``node_of`` maps module names of ``package`` to (self-edges dropped)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        source = node_of(_module_name(path))
        assert source is not None
        targets = {node_of(m) for m in _imported_modules(path)} - {None, source}
        graph.setdefault(source, set()).update(t for t in targets if t is not None)
    return graph


def _franca_core_unit(module: str) -> str | None:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "franca_core" and len(parts) > 1 else None


def test_franca_core__subpackages_have_no_import_cycle() -> None:
    graph = _import_graph("franca_core", _franca_core_unit)
    assert "franca_core.checkpoint" in graph and "franca_core.train" in graph, sorted(graph)
    cycle = _find_cycle(graph)
    assert not cycle, f"import cycle between franca_core subpackages/modules: {' -> '.join(cycle)}"


def test_franca_cli__modules_have_no_import_cycle() -> None:
    cli_modules = {_module_name(p) for p in (ROOT / "franca_cli").rglob("*.py")}
    graph = _import_graph("franca_cli", lambda m: m if m in cli_modules else None)
    cycle = _find_cycle(graph)
    assert not cycle, f"import cycle between franca_cli modules: {' -> '.join(cycle)}"


def test_find_cycle__reports_the_loop() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) == []

"""The layers point down only: franca_core is a library and never imports orchestration."""

from __future__ import annotations

import ast
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

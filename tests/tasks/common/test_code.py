"""Code versions (tasks/common/code.py): a stage's key follows the source it runs, transitively."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tasks.common import code


def test_code_modules__follow_imports_transitively_and_skip_the_config_schema() -> None:
    modules = code.code_modules("tasks.pretrain")
    assert {"tasks.pretrain", "tasks.common.ray_train", "tasks.common.train_loop", "franca_core.train.trainer",
            "franca_core.checkpoint", "tasks.common.store"} <= set(modules)
    assert "franca_core.config" not in modules and "tasks.download" not in modules
    assert "franca_core.train.trainer" not in code.code_modules("tasks.download")  # training code: no re-download


@pytest.fixture()
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throw-away project package ``tasks.zz_probe`` importing ``tasks.zz_helper`` (inside a function)."""
    pkg = Path(code.module_file("tasks.common.code")).parents[1]  # type: ignore[arg-type]
    probe, helper = pkg / "zz_probe.py", pkg / "zz_helper.py"
    probe.write_text('"""Probe."""\n\ndef run():\n    from tasks import zz_helper\n    return zz_helper.VALUE\n')
    helper.write_text("VALUE = 1\n")
    code._module_digest.cache_clear()
    yield helper
    probe.unlink()
    helper.unlink()
    sys.modules.pop("tasks.zz_probe", None)
    code._module_digest.cache_clear()


def test_code_digest__changes_with_an_imported_module_not_with_comments_or_docstrings(package: Path) -> None:
    before = code.code_digest("tasks.zz_probe")
    assert "tasks.zz_helper" in code.code_modules("tasks.zz_probe")
    package.write_text('"""A docstring now."""\n# and a comment\nVALUE = 1  # same code\n')
    code._module_digest.cache_clear()
    assert code.code_digest("tasks.zz_probe") == before
    package.write_text("VALUE = 2\n")
    code._module_digest.cache_clear()
    assert code.code_digest("tasks.zz_probe") != before

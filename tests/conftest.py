"""Test configuration: offline settings first (before any library that phones home is imported), shared paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.offline import apply_offline_env

apply_offline_env()

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``gpu`` run only where CUDA exists; elsewhere they are skipped with the reason, never passed."""
    if item.get_closest_marker("gpu") is not None:
        import torch  # here, not at the top: most test runs never reach a gpu test

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU: torch.cuda.is_available() is false here (marked gpu)")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or skip with the reason when it is absent."""
    if not (SHARED_DATA / "tinyimagenet-train.parquet").is_file():
        pytest.skip(f"real image sets not found at {SHARED_DATA} (see ../shared/data/README.md)")
    return SHARED_DATA

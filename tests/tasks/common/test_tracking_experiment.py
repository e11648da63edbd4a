"""Two flow runs started together both create the experiment; the second must take the first's."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from franca_core.config import PipelineConfig
from tasks.common import tracking


def test_experiment_created_by_a_concurrent_run_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which would point this test at another test's store.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = PipelineConfig.model_validate({"storage": {"root": str(tmp_path)}})
    made = tracking.experiment_id(cfg)

    # The race's window: this run looked before the other one created it, so its lookup saw nothing.
    real = MlflowClient.get_experiment_by_name
    calls: list[str] = []

    def first_lookup_misses(self: MlflowClient, name: str):  # type: ignore[no-untyped-def]
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", first_lookup_misses)
    assert tracking.experiment_id(cfg) == made
    assert len(calls) == 2


def test_other_create_errors_are_not_swallowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which would point this test at another test's store.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = PipelineConfig.model_validate({"storage": {"root": str(tmp_path)}})
    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", lambda self, name: None)
    tracking.experiment_id(cfg)  # creates it, the lookup notwithstanding
    # Still missing after the failed create: the error is real and surfaces.
    with pytest.raises(Exception, match="RESOURCE_ALREADY_EXISTS|already exists"):
        tracking.experiment_id(cfg)


def test_experiment_opens_in_the_model_training_view(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = PipelineConfig.model_validate({"storage": {"root": str(tmp_path)}})
    c = tracking.client(cfg)
    made = tracking.experiment_id(cfg)
    assert c.get_experiment(made).tags["mlflow.experimentKind"] == "custom_model_development"
    older = c.create_experiment("made-before-the-tag", tags={"mlflow.experimentKind": "genai_development"})
    cfg = PipelineConfig.model_validate({"storage": {"root": str(tmp_path)},
                                         "tracking": {"experiment": "made-before-the-tag"}})
    assert tracking.experiment_id(cfg) == older
    assert c.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"

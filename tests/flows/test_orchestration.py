"""The ``franca`` flow's orchestration with test-only stand-in stages: caching, MLflow lineage, registration.

Prefect runs under ``prefect_test_harness`` (a temporary server) and MLflow on SQLite in a temporary folder; the
stage functions are ``tests/flows/fake_stages.py`` so these run in about two minutes. The deployment path with the
real stages is ``test_deployment.py``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest

from franca_core.config import ConfigError, load_config
from tasks.common import lineage
from tasks.common.contract import load_stage
from tasks.common.redact import CredentialError, redact, redact_tree
from tasks.common.store import StageResult
from tasks.common.tracking import TAG

# Loaded by path: the test suite runs in importlib mode, where test folders are not on sys.path.
_spec = importlib.util.spec_from_file_location("fake_stages", Path(__file__).with_name("fake_stages.py"))
fake_stages = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(fake_stages)  # type: ignore[union-attr]

STAGES = {"source", "select", "download", "dedup", "pretrain", "rasa", "highres", "evaluate", "register"}


# ------------------------------------------------------------------------------------------------ unit
def test_stage_key__ignores_run_ids_and_undeclared_sections() -> None:
    cfg = load_config("tiny")
    pretrain = load_stage("pretrain")
    result = StageResult(stage="dedup", uri="/x", input_digest="a" * 64, digest="b" * 64, run_id="r1")
    key = pretrain.key(cfg, {"dataset": result}).digest
    same = pretrain.key(cfg, {"dataset": result.model_copy(update={"cached": True, "run_id": "r2"})}).digest
    other_eval = pretrain.key(load_config("tiny", ["eval.knn_k=[5]"]), {"dataset": result}).digest
    operational = pretrain.key(load_config("tiny", ["train.log_every=7"]), {"dataset": result}).digest
    other_train = pretrain.key(load_config("tiny", ["train.seed=3"]), {"dataset": result}).digest
    other_input = pretrain.key(cfg, {"dataset": result.model_copy(update={"digest": "c" * 64})}).digest
    assert key == same == other_eval == operational
    assert len({key, other_train, other_input}) == 3


def test_redact__masks_credentials_in_uris_and_secret_keys() -> None:
    assert redact("s3://AKIAX:hunter2/with-slash@bucket/p") == "s3://***@bucket/p"  # userinfo dropped whole
    assert "hunter2" not in redact("https://h/x?token=hunter2&a=1")
    tree = redact_tree({"aws_secret_access_key": "hunter2", "kmeans_max_tokens": 5, "uri": "http://u:hunter2@h"})
    assert "hunter2" not in str(tree) and tree["kmeans_max_tokens"] == 5


def test_flow_config__refuses_credentials_with_a_redacted_error() -> None:
    """What the flow stores (parameters) is the caller's; what it logs and raises must not echo a secret."""
    from prefect.logging import disable_run_logger

    from flows.full_pipeline import config

    with disable_run_logger(), pytest.raises(CredentialError) as err:
        config("tiny", ["storage.root=s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG@bucket/x"], None)
    assert "'storage.root'" in str(err.value) and "wJalrXUtnFEMI" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    with disable_run_logger(), pytest.raises(ConfigError) as bad:  # a rejected value is echoed as (got ...)
        config("tiny", ["train.seed=https://franca:hunter2pw@127.0.0.2/"], None)
    assert "train.seed" in str(bad.value) and "hunter2pw" not in str(bad.value)


# ----------------------------------------------------------------------------------------- flow (harness)
@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    root = tmp_path_factory.mktemp("orchestration")
    mp = pytest.MonkeyPatch()
    calls = fake_stages.install(mp)
    overrides = [f"storage.root={root / 'store'}", f"tracking.tracking_uri=sqlite:///{root / 'mlflow.db'}"]
    try:
        with prefect_test_harness(server_startup_timeout=240), \
                temporary_settings({PREFECT_LOCAL_STORAGE_PATH: str(root / "prefect-results")}):
            from flows.full_pipeline import franca

            first = franca(profile="tiny", overrides=overrides)
            yield {"root": root, "calls": calls, "overrides": overrides, "flow": franca, "first": first,
                   "client": mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")}
    finally:
        mp.undo()


def _children(client: mlflow.MlflowClient, parent: str) -> dict[str, Any]:
    runs = client.search_runs([client.get_experiment_by_name("franca").experiment_id],
                              f"tags.`mlflow.parentRunId` = '{parent}'")
    return {r.data.tags[f"{TAG}stage"]: r for r in runs}


@pytest.mark.slow
@pytest.mark.integration
def test_flow__one_parent_run_with_a_child_per_stage_and_a_candidate_model(env: dict[str, Any]) -> None:
    c, first = env["client"], env["first"]
    parent = c.get_run(first["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert {f"{TAG}flow_run_id", f"{TAG}git_commit", f"{TAG}config_digest", f"{TAG}profile"} <= set(parent.data.tags)
    children = _children(c, parent.info.run_id)
    assert set(children) == STAGES
    assert all(r.info.status == "FINISHED" for r in children.values())
    dedup_input = children["pretrain"].inputs.dataset_inputs[0]
    assert len(dedup_input.dataset.digest) == 32
    assert {t.key: t.value for t in dedup_input.tags}["sha256"] == first["dataset_digest"]
    version = c.get_model_version_by_alias("franca-tiny", "candidate")
    assert version.tags[f"{TAG}dataset_digest"] == first["dataset_digest"]
    assert version.tags[f"{TAG}pipeline_run_id"] == parent.info.run_id


@pytest.mark.slow
@pytest.mark.integration
def test_flow__rerun_is_served_from_cache_and_logged_as_stubs(env: dict[str, Any]) -> None:
    calls_before = dict(env["calls"])
    again = env["flow"](profile="tiny", overrides=env["overrides"])
    assert dict(env["calls"]) == calls_before  # no stage function ran
    children = _children(env["client"], again["mlflow_run_id"])
    assert set(children) == STAGES
    assert all(f"{TAG}cached_from" in r.data.tags for r in children.values())
    assert again["model"] == env["first"]["model"]  # the cached register step: no new version


@pytest.mark.slow
@pytest.mark.integration
def test_flow__changing_an_eval_setting_reruns_only_evaluate_and_register(env: dict[str, Any]) -> None:
    calls_before = dict(env["calls"])
    out = env["flow"](profile="tiny", overrides=[*env["overrides"], "eval.knn_k=[5]"])
    ran = {k for k, v in env["calls"].items() if v != calls_before.get(k)}
    assert ran == {"evaluate"}
    children = _children(env["client"], out["mlflow_run_id"])
    fresh = {s for s, r in children.items() if f"{TAG}cached_from" not in r.data.tags}
    assert fresh == {"evaluate", "register"}
    assert out["model"] != env["first"]["model"]


@pytest.mark.slow
@pytest.mark.integration
def test_flow__invalid_config_fails_before_anything_is_written(env: dict[str, Any]) -> None:
    c = env["client"]
    n_runs = len(c.search_runs([c.get_experiment_by_name("franca").experiment_id]))
    files = sorted(p for p in (env["root"] / "store").rglob("*"))
    with pytest.raises(ConfigError, match="train.optim.base_lr"):
        env["flow"](profile="tiny", overrides=[*env["overrides"], "train.optim.base_lr=-1"])
    assert len(c.search_runs([c.get_experiment_by_name("franca").experiment_id])) == n_runs
    assert sorted(p for p in (env["root"] / "store").rglob("*")) == files


@pytest.mark.slow
@pytest.mark.integration
def test_lineage__reaches_the_url_list_and_verify_catches_a_changed_output(env: dict[str, Any]) -> None:
    c = env["client"]
    mlflow.set_tracking_uri(f"sqlite:///{env['root'] / 'mlflow.db'}")
    record = lineage.trace(c, "models:/franca-tiny/1")
    assert [s["stage"] for s in record["stages"]] == list(reversed(lineage.STAGE_ORDER))
    assert record["url_list"]["sha256"] == env["first"]["url_list_digest"]
    assert lineage.trace(c, record["stages"][4]["run_id"])["pipeline"] == record["pipeline"]  # a stage run id
    assert all(ch["status"] == "ok" for ch in lineage.verify(c, record))
    pretrain = next(s for s in record["stages"] if s["stage"] == "pretrain")
    weights = Path(pretrain["output_uri"]) / "backbone.safetensors"
    assert lineage.trace(c, str(weights))["pipeline"]["run_id"] == env["first"]["mlflow_run_id"]  # a checkpoint
    weights.write_bytes(b"tampered")
    bad = [ch for ch in lineage.verify(c, record) if ch["status"] == "changed"]
    assert [(ch["stage"], ch["output"]) for ch in bad] == [("pretrain", "backbone")]

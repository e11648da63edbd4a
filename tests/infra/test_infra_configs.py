"""The shipped deployment and cluster configs parse, name what the code expects and hold no credentials."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted([ROOT / "prefect.yaml", *(ROOT / "infra").rglob("*.yaml")])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config__parses_and_holds_no_credentials(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(d, dict) for d in docs)
    text = path.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{12,}", text), "an AWS access key id in a shipped config"
    assert not re.search(r"://[^/\s:$]+:[^/\s@${]+@", text), "a password inside a URI in a shipped config"


def test_prefect_yaml__deploys_the_franca_flow_on_franca_local() -> None:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"full-pipeline", "periodic-retrain", "ablation"}
    pipeline = "flows/full_pipeline.py:franca"
    entrypoints = {"full-pipeline": pipeline, "periodic-retrain": pipeline, "ablation": "flows/ablation.py:ablation"}
    for name, d in deployments.items():
        assert d["entrypoint"] == entrypoints[name] and d["work_pool"]["name"] == "franca-local"
    schedule = deployments["periodic-retrain"]["schedules"][0]
    assert schedule["cron"] and deployments["periodic-retrain"]["parameters"]["snapshots"]
    assert "pull" not in spec  # prefect deploy records the checkout: no absolute path committed


def test_ray_cluster_yaml__passes_rays_schema() -> None:
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    validate_config(fillout_defaults(yaml.safe_load((ROOT / "infra/ray/cluster.yaml").read_text())))


def test_kuberay_manifests__are_rayjob_and_raycluster() -> None:
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in (ROOT / "infra/kuberay").glob("*.yaml")}
    assert kinds == {"RayJob", "RayCluster"}


def test_newest_snapshot__is_the_last_parquet_by_name(tmp_path: Path) -> None:
    from prefect.logging import disable_run_logger

    from flows.full_pipeline import newest_snapshot
    from franca_core.config import ConfigError

    with disable_run_logger():
        with pytest.raises(ConfigError, match="no URL snapshot"):
            newest_snapshot(str(tmp_path))
        for name in ("laion-2025-01-01.parquet", "laion-2025-03-01.parquet", "laion-2025-02-01.parquet"):
            (tmp_path / name).write_bytes(b"")
        assert newest_snapshot(str(tmp_path)).endswith("laion-2025-03-01.parquet")

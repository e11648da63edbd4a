"""The shipped deployment and cluster configs parse, name what the code expects and hold no credentials."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted([ROOT / "prefect.yaml", *(ROOT / "infra").rglob("*.yaml"), *(ROOT / "infra").rglob("*.json")])


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


# ----------------------------------------------------------------------------------------------- Kubernetes work pools
TEMPLATES = {"franca-k8s": ROOT / "infra/prefect/base-job-template.json",
             "franca-k8s-gpu": ROOT / "infra/prefect/base-job-template.gpu.json"}


def render(pool: str, **values: object) -> dict:
    """The Kubernetes job a work pool's base job template gives a flow run, with these job variables (Prefect's
    own templating: the variables' defaults, then the deployment's values)."""
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration

    template = json.loads(TEMPLATES[pool].read_text())
    validate_base_job_template(template)  # what the server checks on `prefect work-pool create`
    variables = BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"]) | values
    jsonschema.validate(variables, template["variables"])
    return apply_values(template["job_configuration"], variables)["job_manifest"]


def k8s_manifest(kind: str) -> dict:
    (doc,) = [d for p in (ROOT / "infra/k8s").glob("*.yaml") if (d := yaml.safe_load(p.read_text()))["kind"] == kind]
    return doc


@pytest.mark.parametrize("pool", TEMPLATES)
def test_job_template__flow_pod_gets_tracking_uri_and_s3_from_the_configmap_and_secret(pool: str) -> None:
    pod = render(pool)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config_map, secret = k8s_manifest("ConfigMap"), k8s_manifest("Secret")
    assert {"configMapRef": {"name": config_map["metadata"]["name"]}} in container["envFrom"]
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"]
    (tracking,) = [e for e in container["env"] if e["name"] == "MLFLOW_TRACKING_URI"]  # required: no SQLite in a pod
    assert tracking["valueFrom"]["configMapKeyRef"] == {"name": "franca-endpoints", "key": "MLFLOW_TRACKING_URI"}
    assert not any("value" in e for e in container["env"])  # nothing literal, secrets least of all
    assert {"MLFLOW_TRACKING_URI", "PREFECT_API_URL", "AWS_DEFAULT_REGION"} <= set(config_map["data"])
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(v.startswith("REPLACE_WITH_") for v in secret["stringData"].values())  # a template, never real keys
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
    bigger = render(pool, cpu_request="16", memory_limit="128Gi")["spec"]["template"]["spec"]["containers"][0]
    assert bigger["resources"]["requests"]["cpu"] == "16" and bigger["resources"]["limits"]["memory"] == "128Gi"
    assert render(pool, namespace="ml")["metadata"]["namespace"] == "ml"


def test_gpu_job_template__gpu_limit_node_selector_and_tolerations_as_variables() -> None:
    pod = render("franca-k8s-gpu")["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    four = render("franca-k8s-gpu", gpus=4, node_selector={"node.kubernetes.io/instance-type": "p5.48xlarge"},
                  tolerations=[])["spec"]["template"]["spec"]
    assert four["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert four["nodeSelector"] == {"node.kubernetes.io/instance-type": "p5.48xlarge"} and four["tolerations"] == []
    with pytest.raises(jsonschema.ValidationError):
        render("franca-k8s-gpu", gpus=0)
    cpu = render("franca-k8s")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"] and not cpu["tolerations"]
    # The two templates are one job apart from the GPU limit (and the variables' defaults).
    gpu_config = json.loads(TEMPLATES["franca-k8s-gpu"].read_text())["job_configuration"]
    del gpu_config["job_manifest"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert gpu_config == json.loads(TEMPLATES["franca-k8s"].read_text())["job_configuration"]


def test_kubernetes_deployments__job_variables_fit_their_pools_template() -> None:
    spec = yaml.safe_load((ROOT / "infra/prefect/prefect.kubernetes.yaml").read_text())
    pools = set()
    for d in spec["deployments"]:
        pool = d["work_pool"]["name"]
        template = json.loads(TEMPLATES[pool].read_text())
        jsonschema.validate(d["work_pool"]["job_variables"], template["variables"])  # as the server does on deploy
        pools.add(pool)
        assert not any(k.startswith("AWS_") for k in d["work_pool"]["job_variables"].get("env", {}))
    assert pools == set(TEMPLATES)


def test_compose__published_ports_bind_loopback_unless_told_otherwise() -> None:
    compose = yaml.safe_load((ROOT / "infra/mlflow/compose.yaml").read_text())
    published = {name: s["ports"] for name, s in compose["services"].items() if "ports" in s}
    assert set(published) == {"mlflow", "prefect"}
    for ports in published.values():
        for port in ports:  # host address, host port, container port; FRANCA_BIND=0.0.0.0 opens them on purpose
            address, host_port, container_port = port.rsplit(":", 2)
            assert address == "${FRANCA_BIND:-127.0.0.1}" and host_port == container_port
    assert "ports" not in compose["services"]["postgres"]


def test_kuberay_pods__get_the_s3_settings_from_the_configmap_and_secret() -> None:
    names = {k8s_manifest("ConfigMap")["metadata"]["name"], k8s_manifest("Secret")["metadata"]["name"]}
    for path in (ROOT / "infra/kuberay").glob("*.yaml"):
        spec = yaml.safe_load(path.read_text())["spec"]
        cluster = spec.get("rayClusterSpec", spec)
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        for container in (c for g in groups for c in g["template"]["spec"]["containers"]):
            refs = {r.get("configMapRef", r.get("secretRef", {})).get("name") for r in container["envFrom"]}
            assert names <= refs, (path.name, container["name"])

"""The register stage against a real MLflow server: a pyfunc model that serves our features from
``models:/<name>@candidate``, the lineage tags, and a lineage picture on the register run.

The upstream stage runs are MLflow runs carrying the tags ``tasks.common.tracking`` writes (stage, output digest,
upstream run ids) under one parent run; the model and RASA files are real (a tiny backbone: embed_dim 64, depth 2).
"""

from __future__ import annotations

import hashlib
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from franca_core.config import load_config
from franca_core.export import example_images, feature_model
from franca_core.models.backbone import build_backbone
from franca_core.models.io import load_backbone, save_backbone
from tasks.common.store import StageResult
from tests.mlflow_server import mlflow_server as serve_mlflow

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# stage -> {role: upstream stage}, as flows/full_pipeline.py wires them (register's inputs come last)
UPSTREAM = {"source": {}, "select": {"urls": "source"}, "download": {"subset": "select"},
            "dedup": {"shards": "download"}, "pretrain": {"dataset": "dedup"},
            "highres": {"model": "pretrain", "dataset": "dedup"}, "rasa": {"model": "highres", "dataset": "dedup"},
            "evaluate": {"model": "highres", "rasa": "rasa"}}
REGISTER_INPUTS = {"model": "highres", "rasa": "rasa", "report": "evaluate", "dataset": "dedup"}
MODEL = ["train.model.embed_dim=64", "train.model.depth=2", "train.model.num_heads=2", "train.model.img_size=32"]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 (SQLite + local artifacts), as ``infra.stack`` starts it."""
    with serve_mlflow(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="module")
def registered(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import mlflow

    from tasks.common.runner import run_stage
    from tasks.common.tracking import TAG, MlflowTracker, experiment_id, open_parent

    previous = mlflow.get_tracking_uri()
    root = tmp_path_factory.mktemp("store")
    cfg = load_config("tiny", [f"storage.root={root}", f"tracking.tracking_uri={mlflow_server}", *MODEL])
    parent = open_parent(cfg, "flow-run-register-test")
    c, exp = mlflow.MlflowClient(mlflow_server), experiment_id(cfg)

    torch.manual_seed(0)
    model_cfg = cfg.train.model.model_copy(update={"drop_path": 0.0})
    backbone = build_backbone(model_cfg, drop_path=0.0)
    for block in backbone.blocks:  # non-trivial LayerScale: every block shapes the features
        block.ls1.gamma.data.normal_()
        block.ls2.gamma.data.normal_()
    files = {"highres": {"backbone": save_backbone(backbone, model_cfg, root / "highres" / "backbone.safetensors")},
             "rasa": {"rasa": root / "rasa" / "rasa.safetensors"}, "evaluate": {"json": root / "evaluate" / "r.json"}}
    files["rasa"]["rasa"].parent.mkdir(parents=True)
    save_file({"rasa.matrix": torch.randn(64, 64) / 8}, str(files["rasa"]["rasa"]))
    files["evaluate"]["json"].parent.mkdir(parents=True)
    files["evaluate"]["json"].write_text("{}")

    results: dict[str, StageResult] = {}
    for stage, ups in UPSTREAM.items():  # in flow order: every upstream run exists before its reader's
        digest = hashlib.sha256(stage.encode()).hexdigest()
        tags = {f"{TAG}stage": stage, f"{TAG}output_digest": digest, "mlflow.parentRunId": parent,
                **{f"{TAG}upstream.{role}": results[up].run_id for role, up in ups.items()}}
        run = c.create_run(exp, run_name=stage, tags=tags)
        c.set_terminated(run.info.run_id, "FINISHED")
        results[stage] = StageResult(stage=stage, uri=str(root / stage), input_digest="0" * 64, digest=digest,
                                     run_id=run.info.run_id,
                                     files={k: str(v) for k, v in files.get(stage, {}).items()})
    inputs = {role: results[stage] for role, stage in REGISTER_INPUTS.items()}
    tracker = MlflowTracker(cfg, parent)
    try:
        t0 = time.perf_counter()
        result = run_stage("register", cfg, tracker=tracker, **inputs)
        print(f"register stage: {time.perf_counter() - t0:.1f} s")
        yield {"cfg": cfg, "client": c, "result": result, "upstream": results, "inputs": inputs, "tracker": tracker,
               "weights": files["highres"]["backbone"], "rasa": files["rasa"]["rasa"]}
    finally:
        mlflow.set_tracking_uri(previous)


def test_register__pyfunc_from_the_alias_serves_our_features_and_honours_dim(registered: dict[str, Any]) -> None:
    import mlflow

    name = registered["result"].stats["name"]
    model = mlflow.pyfunc.load_model(f"models:/{name}@candidate")
    loaded = load_backbone(registered["weights"])
    loaded.rasa_matrix = load_file(str(registered["rasa"]))["rasa.matrix"]  # the rasa stage's own file
    images = example_images(loaded.model_cfg, batch=3, seed=4)
    with torch.no_grad():
        cls, patch = feature_model(loaded)(images)
    out = model.predict(images.numpy())
    assert set(out) == {"cls", "patch"} and out["cls"].shape == (3, 64) and out["patch"].shape == (3, 16, 64)
    np.testing.assert_allclose(out["cls"], cls.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["patch"], patch.numpy(), atol=1e-5, rtol=0)  # RASA applied to patch tokens
    assert float(np.abs(out["patch"] - (patch @ torch.linalg.inv(loaded.rasa_matrix)).numpy()).max()) > 1e-3

    small = model.predict(images.numpy(), params={"dim": 16})
    assert small["cls"].shape == (3, 16) and small["patch"].shape == (3, 16, 16)
    np.testing.assert_allclose(small["cls"], out["cls"][:, :16], atol=1e-6, rtol=0)
    with pytest.raises(Exception, match="dim=65 is out of range"):
        model.predict(images.numpy(), params={"dim": 65})


def test_register__model_has_a_signature_with_dim_and_an_input_example(registered: dict[str, Any]) -> None:
    import mlflow

    name = registered["result"].stats["name"]
    info = mlflow.models.get_model_info(f"models:/{name}@candidate")
    sig = info.signature
    assert sig is not None and sig.inputs.to_dict()[0]["tensor-spec"] == {"dtype": "float32", "shape": (-1, 3, -1, -1)}
    assert [o["name"] for o in sig.outputs.to_dict()] == ["cls", "patch"]
    assert {p.name: p.default for p in sig.params.params}["dim"] == 64
    assert info.saved_input_example_info is not None
    assert set(info.flavors["python_function"]) >= {"model_code_path", "artifacts"}  # models from code: no pickle
    with pytest.raises(Exception, match="float32|dtype"):  # the signature is enforced
        mlflow.pyfunc.load_model(f"models:/{name}@candidate").predict(np.zeros((1, 3, 16, 16), np.float64))


def test_register__version_keeps_lineage_tags_and_a_second_call_is_a_checked_hit(registered: dict[str, Any]) -> None:
    from tasks.common.runner import run_stage

    c, result, up = registered["client"], registered["result"], registered["upstream"]
    name, version = result.stats["name"], str(result.stats["version"])
    mv = c.get_model_version(name, version)
    tags = mv.tags
    assert "pyfunc" in mv.description and "dim" in mv.description
    assert {tags[f"franca.run.{s}"] for s in ("highres", "rasa", "evaluate", "dedup")} == {
        up[s].run_id for s in ("highres", "rasa", "evaluate", "dedup")}
    assert tags["franca.dataset_digest"] == up["dedup"].digest and tags["franca.run.register"] == result.run_id
    assert tags["franca.model_digest"] == result.digest
    again = run_stage("register", registered["cfg"], tracker=registered["tracker"], **registered["inputs"])
    assert again.cached and again.uri == result.uri and again.digest == result.digest
    artifacts = {a.path for a in c.list_artifacts(result.run_id, "model")}
    assert {"model/MLmodel", "model/franca_model.json", "model/artifacts"} <= artifacts


def test_register__run_carries_a_lineage_picture_naming_every_stage(registered: dict[str, Any],
                                                                     tmp_path: Path) -> None:
    c, result, up = registered["client"], registered["result"], registered["upstream"]
    assert "lineage.svg" in {a.path for a in c.list_artifacts(result.run_id)}
    svg = Path(c.download_artifacts(result.run_id, "lineage.svg", str(tmp_path)))
    texts = [t.text or "" for t in ET.parse(svg).getroot().iter("{http://www.w3.org/2000/svg}text")]
    boxes = [t for t in texts if t in (*UPSTREAM, "register")]
    assert sorted(boxes) == sorted([*UPSTREAM, "register"])  # each stage once, from the URL list to the model
    for stage, r in up.items():
        assert f"run {r.run_id}" in texts and f"digest {r.digest[:12]}" in texts, stage
    assert f"run {result.run_id}" in texts and f"digest {result.digest[:12]}" in texts
    arrows = ET.parse(svg).getroot().iter("{http://www.w3.org/2000/svg}path")
    assert len([p for p in arrows if p.get("marker-end")]) == sum(map(len, UPSTREAM.values())) + 4


def test_export__from_the_registry_onnx_matches_the_pyfunc(registered: dict[str, Any], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import mlflow
    import onnxruntime as ort

    from franca_cli.main import main

    name = registered["result"].stats["name"]
    uri = registered["cfg"].tracking.tracking_uri
    code = main(["export", f"models:/{name}@candidate", "--format", "onnx", str(tmp_path / "m.onnx"),
                 "--tracking-uri", uri])
    summary = json.loads(capsys.readouterr().out)
    print(f"ONNX (from models:/{name}@candidate) vs torch, max abs difference: {summary['max_abs_diff']:.2e}")
    assert code == 0 and summary["max_abs_diff"] < 1e-3
    images = example_images(load_backbone(registered["weights"]).model_cfg, batch=2, seed=7).numpy()
    cls, patch = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": images})
    served = mlflow.pyfunc.load_model(f"models:/{name}@candidate").predict(images)
    np.testing.assert_allclose(cls, served["cls"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(patch, served["patch"], atol=1e-3, rtol=0)

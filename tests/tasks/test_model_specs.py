"""``tasks.common.model_io.load_model`` against real servers: ``models:/`` URIs on an ``mlflow server`` (the pyfunc
layout the register stage logs, and the older one with separate backbone / RASA files) and ``s3://`` files on
``moto_server``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from franca_cli.main import main
from franca_core.config import ModelConfig
from franca_core.models.backbone import build_backbone
from franca_core.models.foreign import TimmBackbone
from franca_core.models.io import save_backbone
from tasks.common.model_io import load_model
from tests.franca_core.models.test_foreign_layouts import _dinov3_reference
from tests.mlflow_server import mlflow_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CFG = ModelConfig(embed_dim=64, depth=2, num_heads=2, patch_size=16, img_size=32, num_registers=2, drop_path=0.0)


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 (SQLite + local artifacts)."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


def _register(uri: str, name: str, folder: Path, alias: str | None = None) -> str:
    """Log ``folder`` as ``model/`` of a new run and register it as a new version of ``name``."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment(f"exp-{name}-{time.monotonic_ns()}")
    run = client.create_run(exp)
    client.log_artifacts(run.info.run_id, str(folder), artifact_path="model")
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(name)
    except mlflow.exceptions.MlflowException:
        pass  # the second version
    version = client.create_model_version(name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def test_load_model__registered_versions_by_alias_and_number(mlflow_uri: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(CFG, drop_path=0.0)
    matrix = torch.eye(64) - torch.full((64, 64), 1 / 64)
    # as the register stage logs it: one self-describing safetensors (backbone + RASA) named by franca_model.json
    pyfunc = tmp_path / "pyfunc"
    save_backbone(backbone, CFG, pyfunc / "artifacts" / "franca_backbone.safetensors", rasa_matrix=matrix)
    card = {"files": {"weights": "artifacts/franca_backbone.safetensors"}}
    (pyfunc / "franca_model.json").write_text(json.dumps(card))
    assert _register(mlflow_uri, "byo-model", pyfunc, alias="candidate") == "1"
    # an older version: the pretrain stage's plain backbone, its train config and the RASA file side by side
    old = tmp_path / "old"
    old.mkdir()
    save_file({k: v.contiguous() for k, v in backbone.state_dict().items()}, str(old / "model.backbone.safetensors"))
    (old / "model.train_config.json").write_text(json.dumps({"model": CFG.model_dump(mode="json")}))
    save_file({"rasa.matrix": matrix * 2}, str(old / "rasa.rasa.safetensors"))
    (old / "franca_model.json").write_text(json.dumps({"files": {
        "model.backbone": "model.backbone.safetensors", "model.train_config": "model.train_config.json",
        "rasa.rasa": "rasa.rasa.safetensors"}}))
    assert _register(mlflow_uri, "byo-model", old) == "2"

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = backbone.eval().forward_masked(x)
    for spec, want in (("models:/byo-model@candidate", matrix), ("models:/byo-model/1", matrix),
                       ("models:/byo-model/2", matrix * 2)):
        loaded = load_model(spec, tmp_path / spec.replace("/", "_").replace(":", "_").replace("@", "_"),
                            tracking_uri=mlflow_uri)
        assert loaded.source == spec and loaded.model_cfg.embed_dim == 64
        assert loaded.rasa_matrix is not None and torch.equal(loaded.rasa_matrix, want)
        with torch.no_grad():
            out = loaded.network.forward_masked(x)
        assert torch.equal(out["cls"], ref["cls"]) and torch.equal(out["patch"], ref["patch"])
    # the CLI resolves the same URI through MLFLOW_TRACKING_URI
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 40), (80 * i, 30, 200)).save(images / f"{i}.png")
    capsys.readouterr()  # MLflow's "View run" lines of the registrations
    assert main(["features", str(images), "--model", "models:/byo-model@candidate", "--out",
                 str(tmp_path / "f.parquet"), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 3 and summary["embed_dim"] == 64
    assert pq.read_schema(tmp_path / "f.parquet").metadata[b"model"] == b"models:/byo-model@candidate"
    with pytest.raises(ValueError, match="models:/byo-model@nope"):
        load_model("models:/byo-model@nope", tmp_path / "x", tracking_uri=mlflow_uri)
    with pytest.raises(ValueError, match="not models:/<name>@<alias>"):
        load_model("models:/byo-model", tmp_path / "y", tracking_uri=mlflow_uri)


def test_load_model__s3_files_of_any_layout(moto_s3: str, tmp_path: Path) -> None:
    import s3fs

    ref, orig = _dinov3_reference(swiglu=False)
    torch.save(orig, tmp_path / "dinov3.pth")
    s3fs.S3FileSystem().put(str(tmp_path / "dinov3.pth"), f"{moto_s3}/weights/dinov3.pth")
    loaded = load_model(f"{moto_s3}/weights/dinov3.pth", tmp_path / "dl", num_heads=2)
    assert isinstance(loaded.network, TimmBackbone) and loaded.source == f"{moto_s3}/weights/dinov3.pth"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = loaded.network.forward_masked(x), ref.eval().forward_features(x)
    assert torch.allclose(ours["cls"], theirs[:, 0], atol=1e-5)
    # timm:NAME with weights on S3
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "eva.safetensors"))
    s3fs.S3FileSystem().put(str(tmp_path / "eva.safetensors"), f"{moto_s3}/weights/eva.safetensors")
    with pytest.raises(ValueError, match="does not fit timm"):  # the named model's default size is another
        load_model(f"timm:vit_small_patch16_dinov3_qkvb:{moto_s3}/weights/eva.safetensors", tmp_path / "dl2")
    with pytest.raises(FileNotFoundError):
        load_model(f"{moto_s3}/weights/missing.pth", tmp_path / "dl3")

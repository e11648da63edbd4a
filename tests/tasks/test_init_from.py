"""``train.init_from``: its content in the pretrain key (so in every key downstream), the weights pretraining starts
from, and ``train.optim.total_steps=0``: released weights (DINOv2 and DINOv3 layouts) passed through pretrain (no Ray)
to highres, rasa, evaluate and the register stage's model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from franca_core.config import ModelConfig, PipelineConfig, load_config
from franca_core.export import example_images, feature_model
from franca_core.models.backbone import FrancaViT, build_backbone
from franca_core.models.foreign import TimmBackbone
from franca_core.models.io import load_backbone, save_backbone
from tasks.common.contract import load_stage
from tasks.common.digests import content_digest
from tasks.common.model_io import init_backbone_state, load_stage_model, rasa_matrix_of
from tasks.common.runner import run_stage
from tasks.common.store import StageResult
from tests.franca_cli.test_model_cli import RASA_FAST, _png
from tests.franca_core.models.test_foreign_layouts import _dinov2_reference, _dinov3_reference
from tests.tasks.test_post_training import FAST

# train.model of the test files: DINOv2 at embed 64, depth 2, 4 heads, /14, 4 registers, GELU MLP; DINOv3 (timm's
# RoPE Eva) at embed 64, depth 2, 2 heads, /16, 4 registers (its summary config says swiglu, the default)
DINOV2 = ["train.model.embed_dim=64", "train.model.depth=2", "train.model.num_heads=4", "train.model.patch_size=14",
          "train.model.num_registers=4", "train.model.ffn=mlp", "train.model.img_size=56",
          "train.crops.global_size=56", "train.crops.local_size=28"]
DINOV3 = ["train.model.embed_dim=64", "train.model.depth=2", "train.model.num_heads=2", "train.model.patch_size=16",
          "train.model.num_registers=4", "train.model.img_size=64", "train.crops.global_size=64",
          "train.crops.local_size=32"]
EVAL_FAST = [f for f in FAST if f.startswith(("data.", "eval."))]


def _upstream(stage: str, n: int) -> StageResult:
    return StageResult(stage=stage, uri=f"/nowhere/{stage}", input_digest=str(n) * 64, digest=str(n + 1) * 64)


def _keys(cfg: PipelineConfig) -> dict[str, str]:
    """The keys of pretrain and every stage after it, chained as flows/full_pipeline.py wires them; each stage's output
    digest held fixed, so only the key chain can carry a change."""
    dataset = _upstream("dedup", 1)
    keys: dict[str, str] = {}
    results: dict[str, StageResult] = {"dataset": dataset}
    wiring = {"pretrain": {"dataset": "dataset"}, "highres": {"model": "pretrain", "dataset": "dataset"},
              "rasa": {"model": "highres", "dataset": "dataset"}, "evaluate": {"model": "highres", "rasa": "rasa"},
              "register": {"model": "highres", "rasa": "rasa", "report": "evaluate", "dataset": "dataset"}}
    for stage, roles in wiring.items():
        keys[stage] = load_stage(stage).key(cfg, {role: results[up] for role, up in roles.items()}).digest
        results[stage] = StageResult(stage=stage, uri=f"/nowhere/{stage}", input_digest=keys[stage], digest="9" * 64)
    return keys


def test_init_from__its_content_changes_the_pretrain_key_and_so_every_key_downstream(tmp_path: Path) -> None:
    weights = tmp_path / "init.pth"
    weights.write_bytes(b"first weights")
    cfg = load_config("tiny", [f"train.init_from={weights}"])
    part = load_stage("pretrain").key(cfg, {"dataset": _upstream("dedup", 1)}).parts["files"]["train.init_from"]
    assert part == content_digest(str(weights))
    before = _keys(cfg)
    weights.write_bytes(b"other weights, same path")
    after = _keys(cfg)
    assert [s for s in before if before[s] == after[s]] == []
    for name in ("rasa", "evaluate"):  # they read the model through the chain, not train.init_from themselves
        assert not any("init_from" in f for f in load_stage(name).reads + load_stage(name).files)


def test_pretrain__bad_init_from_or_no_steps_without_one_raise_before_any_training(tmp_path: Path) -> None:
    _, orig, _ = _dinov2_reference(registers=4, swiglu=False)
    torch.save(orig, tmp_path / "dinov2.pth")
    root = f"storage.root={tmp_path / 'store'}"
    cfg = load_config("tiny", [root, *DINOV2, "train.model.depth=3", f"train.init_from={tmp_path / 'dinov2.pth'}"])
    with pytest.raises(ValueError, match=r"train.init_from=.*dinov2.pth does not load as train.model \(embed_dim=64, "
                                         r"depth=3, .*another architecture: depth=2 \(expected 3\)"):
        run_stage("pretrain", cfg, dataset=_upstream("dedup", 1))
    with pytest.raises(ValueError, match="total_steps=0 trains nothing and train.init_from is not set"):
        run_stage("pretrain", load_config("tiny", [root, "train.optim.total_steps=0"]), dataset=_upstream("dedup", 1))


def test_init_backbone_state__dinov2_weights_at_the_configured_size(tmp_path: Path) -> None:
    _, orig, _ = _dinov2_reference(registers=4, swiglu=False)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in orig.items()}}, tmp_path / "dinov2.pth")
    cfg = ModelConfig(embed_dim=64, depth=2, num_heads=4, patch_size=14, img_size=112, num_registers=4, ffn="mlp")
    state = init_backbone_state(str(tmp_path / "dinov2.pth"), cfg, tmp_path / "dl")
    model = build_backbone(cfg, drop_path=0.0)
    model.load_state_dict(state)  # strict: every weight, position grid resized from 4x4 to 8x8
    assert state["pos_embed"].shape == (1, 1 + 4 + 64, 64)
    assert torch.equal(state["blocks.1.attn.qkv.weight"], orig["blocks.1.attn.qkv.weight"])
    with pytest.raises(ValueError, match=r"another architecture: .*ffn=mlp \(expected swiglu\)"):
        init_backbone_state(str(tmp_path / "dinov2.pth"), cfg.model_copy(update={"ffn": "swiglu"}), tmp_path / "x")
    _, dinov3 = _dinov3_reference(swiglu=False)
    torch.save(dinov3, tmp_path / "dinov3.pth")
    v3 = ModelConfig(embed_dim=64, depth=2, num_heads=2, patch_size=16, img_size=64, num_registers=4)
    with pytest.raises(ValueError, match="FrancaViT cannot represent"):
        init_backbone_state(str(tmp_path / "dinov3.pth"), v3, tmp_path / "y")


def _images(folder: Path, size: int) -> Path:
    (folder / "c0").mkdir(parents=True)
    for i in range(8):
        (folder / "c0" / f"{i}.png").write_bytes(_png(i, size))
    return folder


@pytest.mark.parametrize("layout", ["dinov2", "dinov3"])
def test_pretrain_without_steps__passes_released_weights_on_to_highres_rasa_and_evaluate(tmp_path: Path,
                                                                                         layout: str) -> None:
    """As flows/full_pipeline.py wires them: pretrain -> highres (0 steps) -> rasa, evaluate."""
    if layout == "dinov2":
        _, orig, _ = _dinov2_reference(registers=4, swiglu=False)
        model_fields, size, hr_size = DINOV2, 56, 112
    else:
        _, orig = _dinov3_reference(swiglu=False)
        model_fields, size, hr_size = DINOV3, 64, 96
    weights = tmp_path / f"{layout}.pth"
    torch.save(orig, weights)
    cfg = load_config("tiny", [f"storage.root={tmp_path / 'store'}", *model_fields, "train.optim.total_steps=0",
                               f"train.init_from={weights}", f"rasa.dataset={_images(tmp_path / 'images', size)}",
                               "highres.steps=0", f"highres.global_size={hr_size}",
                               f"highres.local_size={size // 2}", *RASA_FAST, *EVAL_FAST])
    dataset = _upstream("dedup", 1)
    model = run_stage("pretrain", cfg, dataset=dataset)  # no Ray: nothing to train
    assert model.stats["steps"] == 0 and model.stats["init_from_sha256"] == content_digest(str(weights))
    assert set(model.files) == {"backbone", "train_config"} and not Path(model.uri, "ray").exists()
    loaded = load_stage_model(model, tmp_path / "read", expected=cfg.train.model)
    if layout == "dinov2":  # the weights training would start from: the file's, at train.model.img_size
        assert isinstance(loaded.network, FrancaViT) and loaded.model_cfg.img_size == 56
        expected = init_backbone_state(str(weights), cfg.train.model, tmp_path / "init")
        assert all(torch.equal(v, expected[k]) for k, v in loaded.network.state_dict().items())
    else:  # timm's Eva behind the adapter, its weights as loaded from the DINOv3 layout
        assert isinstance(loaded.network, TimmBackbone) and loaded.layout == "timm"
        assert torch.equal(loaded.network.model.state_dict()["blocks.1.attn.qkv.weight"][:64],
                           orig["blocks.1.attn.qkv.weight"][:64])
    assert run_stage("pretrain", cfg, dataset=dataset).cached

    highres = run_stage("highres", cfg, model=model, dataset=dataset)
    assert highres.stats["steps"] == 0
    rasa = run_stage("rasa", cfg, model=highres, dataset=dataset)
    assert load_file(rasa.files["rasa"])["rasa.matrix"].shape == (64, 64)
    report = run_stage("evaluate", cfg, model=highres, rasa=rasa)
    assert "knn_top1.synthetic.cls" in report.stats["summary"]


def test_pretrain_without_steps__a_timm_spec_by_its_file_content(tmp_path: Path) -> None:
    import timm

    from franca_core.models.io import load_model_spec

    weights = tmp_path / "vit.safetensors"
    torch.manual_seed(0)
    save_file(timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict(), str(weights))
    spec = f"timm:vit_tiny_patch16_224:{weights}"
    arch = load_model_spec(spec).model_cfg
    cfg = load_config("tiny", [f"storage.root={tmp_path / 'store'}", "train.optim.total_steps=0",
                               f"train.init_from={spec}", "train.crops.global_size=224", "train.crops.local_size=96",
                               *(f"train.model.{k}={getattr(arch, k)}" for k in
                                 ("embed_dim", "depth", "num_heads", "patch_size", "num_registers", "ffn",
                                  "img_size"))])
    model = run_stage("pretrain", cfg, dataset=_upstream("dedup", 1))
    assert model.stats["init_from_sha256"] == content_digest(str(weights))
    assert model.stats["timm"] == "vit_tiny_patch16_224"
    assert isinstance(load_stage_model(model, tmp_path / "read", cfg.train.model).network, TimmBackbone)
    key = load_stage("pretrain").key(cfg, {"dataset": _upstream("dedup", 1)}).digest
    assert key == model.input_digest
    save_file({k: v + 1 for k, v in load_file(str(weights)).items()}, str(weights))
    assert load_stage("pretrain").key(cfg, {"dataset": _upstream("dedup", 1)}).digest != key


def test_dinov3_pass_through__highres_without_steps_and_the_registered_pyfunc(tmp_path: Path) -> None:
    import mlflow

    from tasks.common.pyfunc_model import save_pyfunc

    _, orig = _dinov3_reference(swiglu=False)
    torch.save(orig, tmp_path / "dinov3.pth")
    overrides = [f"storage.root={tmp_path / 'store'}", *DINOV3, "train.optim.total_steps=0",
                 f"train.init_from={tmp_path / 'dinov3.pth'}", "highres.global_size=96", "highres.local_size=32"]
    dataset = _upstream("dedup", 1)
    model = run_stage("pretrain", load_config("tiny", [*overrides, "highres.steps=0"]), dataset=dataset)
    with pytest.raises(ValueError, match=r"highres.steps=3: the model .* is a timm vit_small_patch16_dinov3_qkvb "
                                         r".*set highres.steps=0"):
        run_stage("highres", load_config("tiny", [*overrides, "highres.steps=3"]), model=model, dataset=dataset)
    cfg = load_config("tiny", [*overrides, "highres.steps=0"])
    highres = run_stage("highres", cfg, model=model, dataset=dataset)
    assert set(highres.files) == {"backbone"} and highres.stats["steps"] == 0
    before, after = load_file(model.files["backbone"]), load_file(highres.files["backbone"])
    assert set(after) == set(before) and all(torch.equal(after[k], v) for k, v in before.items())

    # what register logs: the model read with train.model checked, its RASA matrix, as the pyfunc model
    rasa_file = tmp_path / "rasa.safetensors"
    save_file({"rasa.matrix": torch.eye(64)}, str(rasa_file))
    rasa = StageResult(stage="rasa", uri=str(tmp_path), input_digest="3" * 64, digest="4" * 64,
                       files={"rasa": str(rasa_file)})
    loaded = load_stage_model(highres, tmp_path / "read", cfg.train.model)
    weights = save_backbone(loaded.model(with_rasa=False), loaded.model_cfg, tmp_path / "w.safetensors",
                            rasa_matrix=rasa_matrix_of(rasa, tmp_path / "read"))
    served = mlflow.pyfunc.load_model(str(save_pyfunc(tmp_path / "pyfunc", weights, loaded.model_cfg)))
    images = example_images(cfg.train.model, batch=2, seed=1)
    with torch.no_grad():
        cls, _ = feature_model(load_backbone(weights))(images)
    out = served.predict(images.numpy())
    assert out["cls"].shape == (2, 64) and torch.allclose(torch.from_numpy(out["cls"]), cls, atol=1e-5)


_spec = importlib.util.spec_from_file_location("ray_cluster", Path(__file__).with_name("ray_cluster.py"))
ray_cluster = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(ray_cluster)  # type: ignore[union-attr]


@pytest.mark.slow
@pytest.mark.integration
def test_pretrain_on_ray__starts_from_init_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One step on one Ray worker with the teacher's EMA momentum at 1: the teacher never moves, so the published
    teacher backbone is exactly what the ranks loaded from ``train.init_from``."""
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")  # as test_pretrain: reports wait for the poll
    cfg = load_config("tiny", [f"storage.root={tmp_path / 'store'}", "train.model.img_size=32",
                               "train.crops.global_size=32", "train.crops.local_size=16", "train.crops.n_local=1",
                               "train.optim.batch_size=4", "train.optim.total_steps=1", "train.optim.warmup_steps=0",
                               "train.optim.momentum_start=1.0", "train.optim.momentum_end=1.0",
                               "train.monitor.every=0", "train.log_every=1", "train.loader_workers=0",
                               "train.num_workers=1", "train.cpus_per_worker=1", "train.max_failures=0"])
    torch.manual_seed(123)  # weights the seeded random init (train.seed 0) does not give
    init = save_backbone(build_backbone(cfg.train.model.model_copy(update={"img_size": 64}), drop_path=0.0),
                         cfg.train.model.model_copy(update={"img_size": 64}), tmp_path / "init.safetensors")
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"init_from": str(init)})})
    dataset = ray_cluster.shard_dataset(tmp_path / "dedup", 16)
    result = run_stage("pretrain", cfg, dataset=dataset)
    assert result.stats["steps"] == 1 and result.stats["init_from_sha256"] == content_digest(str(init))
    expected = init_backbone_state(str(init), cfg.train.model, tmp_path / "x")  # position grid 8x8 -> 4x4
    published = load_file(result.files["backbone"])
    assert set(published) == set(expected)
    assert all(torch.equal(published[k], v) for k, v in expected.items())
    student = torch.load(result.files["checkpoint"] + "/state.pt", weights_only=True)["student"]
    moved = student["backbone.blocks.0.attn.qkv.weight"]
    assert not torch.equal(moved, expected["blocks.0.attn.qkv.weight"]), "the student did not train"

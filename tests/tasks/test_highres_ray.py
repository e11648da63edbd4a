"""The highres stage on real Ray Train (the runner it shares with pretrain): a worker killed mid-run restarts the
group from the last checkpoint, data position included, and the run finishes with the requested steps.

The tiny architecture at 32 px, adapted to 48 px on 16 generated images, 4 steps, a checkpoint every 2, on one
worker (the fixed cost is Ray's and the worker group's start, twice; test_pretrain.py runs 2-worker DDP through the
same runner).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from franca_core.config import PipelineConfig, load_config
from franca_core.data.dataset_stream import build_dataset_loader
from franca_core.data.datasets import ImageFolderDataset
from franca_core.data.synthetic import iter_images
from franca_core.highres import highres_train_config
from franca_core.models.backbone import build_backbone
from franca_core.models.io import load_backbone
from tasks.common.digests import sha256_json
from tasks.common.runner import run_stage
from tasks.common.store import StageResult
from tasks.highres import base_train_config
from tasks.highres import highres as highres_stage

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SMALL = ["train.model.img_size=32", "train.crops.global_size=32", "train.crops.local_size=16", "train.crops.n_local=1",
         "train.num_workers=1", "train.cpus_per_worker=1", "train.loader_workers=0", "train.checkpoint_every=2",
         "train.log_every=1", "train.keep_checkpoints=10", "highres.global_size=48", "highres.local_size=16",
         "highres.steps=4", "highres.warmup_steps=1", "highres.batch_size=4"]


@pytest.fixture(autouse=True)
def fast_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Train's controller polls workers every 2 s and a report() waits for that poll (as in test_pretrain)."""
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")


def _inputs(root: Path, cfg: PipelineConfig) -> tuple[StageResult, StageResult]:
    """A pretrain-shaped output (a seeded tiny backbone beside its train config) and an unused dedup output."""
    torch.manual_seed(0)
    folder = root / "pretrained"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in build_backbone(cfg.train.model).state_dict().items()},
              str(folder / "backbone.safetensors"))
    (folder / "train_config.json").write_text(cfg.train.model_dump_json())
    files = {"backbone": str(folder / "backbone.safetensors"), "train_config": str(folder / "train_config.json")}
    model = StageResult(stage="pretrain", uri=str(folder), input_digest="0" * 64, digest=sha256_json(files),
                        files=files)
    return model, StageResult(stage="dedup", uri=str(root / "unused"), input_digest="1" * 64, digest="2" * 64)


def _images(folder: Path, n: int = 16) -> Path:
    for i, (img, _, label) in enumerate(iter_images(n, seed=1, size=48)):
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
        img.save(folder / f"c{label}" / f"{i}.png")
    return folder


def test_highres__worker_failure_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    images = _images(tmp_path / "images")
    cfg = load_config("tiny", [f"storage.root={tmp_path / 'store'}", *SMALL, f"highres.dataset={images}",
                               "train.fail_once_at_step=3", "train.max_failures=1"])
    model, dataset = _inputs(tmp_path, cfg)
    result = run_stage("highres", cfg, model=model, dataset=dataset)
    stats = result.stats
    assert Path(result.uri, ".failed_once_at_step_3").is_file(), "the injected failure did not happen"
    assert stats["resumed_from"] == 2, stats  # the restarted group continued from the step-2 checkpoint, not 0
    assert stats["steps"] == 4 and [h["step"] for h in stats["history"]] == [1, 2, 3, 4], stats["history"]
    assert len(stats["rank_weight_digests"]) == 1

    hr_cfg = highres_train_config(base_train_config(cfg, cfg.train.model_dump(mode="json")), cfg.highres)
    batches = iter(build_dataset_loader(ImageFolderDataset(images), hr_cfg, 0, 1))
    digest = ""
    for _ in range(4):
        digest = hashlib.sha256(digest.encode() + next(batches)["ids"].numpy().tobytes()).hexdigest()
    assert stats["data_digest"] == digest, "the restart changed the data order"

    digest_key = highres_stage.key(cfg, {"model": model, "dataset": dataset}).digest
    run = Path(cfg.storage.root, "highres", digest_key, "ray", f"highres-{digest_key[:16]}")
    assert stats["ray_run"] == str(run) and any(run.glob("checkpoint_*/state.pt"))
    loaded = load_backbone(result.files["backbone"])
    assert loaded.model_cfg.img_size == 48 and loaded.backbone.pos_embed.shape == (1, 1 + 36, 192)
    assert torch.load(result.files["checkpoint"], weights_only=True)["step"] == 4
    assert [h["step"] for h in json.loads(Path(result.files["history"]).read_text())] == [1, 2, 3, 4]
    assert run_stage("highres", cfg, model=model, dataset=dataset).cached

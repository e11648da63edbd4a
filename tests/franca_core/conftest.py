"""Shared fixtures of the franca_core tests: a tiny model pretrained briefly on real images."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from franca_core.config import PipelineConfig, config_digest, load_config

# A few optimisation steps of the tiny profile on tinyimagenet-train: enough to be a "pretrained" teacher
# (EMA of a trained student, heads and backbone moved off their init) in about a minute of a 2-core CPU; far from a
# converged model. Smaller batch and fewer local crops than the profile, so the steps stay cheap.
PRETRAIN_OVERRIDES = [
    "train.optim.batch_size=16", "train.crops.n_local=2", "train.optim.total_steps=6", "train.optim.warmup_steps=2",
    "train.optim.freeze_last_layer_steps=2", "train.loss.teacher_temp_warmup_steps=4", "train.loader_workers=0",
]
_CODE = ("franca_core/models/backbone.py", "franca_core/models/student_teacher.py", "franca_core/train/trainer.py")


def pretrain_tiny(cfg: PipelineConfig, data: Path, out: Path) -> Path:
    """Train ``cfg.train`` on tinyimagenet-train for its ``total_steps``; save the full checkpoint."""
    from franca_core.checkpoint import save_checkpoint
    from franca_core.data.datasets import ParquetImageDataset
    from franca_core.data.multicrop_loader import multicrop_loader
    from franca_core.train.loop import run_steps
    from franca_core.train.trainer import FrancaTrainer

    torch.manual_seed(cfg.train.seed)
    trainer = FrancaTrainer(cfg.train)
    loader = multicrop_loader(cfg.train, ParquetImageDataset(data / "tinyimagenet-train.parquet"))
    run_steps(trainer, loader, cfg.train.optim.total_steps, log_every=cfg.train.optim.total_steps)
    return save_checkpoint(trainer.state_dict(), out / "checkpoint.pt")


@pytest.fixture(scope="session")
def tiny_cfg() -> PipelineConfig:
    return load_config("tiny", PRETRAIN_OVERRIDES)


@pytest.fixture(scope="session")
def tiny_pretrained(request: pytest.FixtureRequest, shared_data: Path, tiny_cfg: PipelineConfig,
                    tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Checkpoint of the briefly pretrained tiny model; reused across sessions through pytest's cache folder
    (keyed by the config and the model/trainer source), else trained into a session temporary folder."""
    root = Path(__file__).resolve().parents[2]
    code = hashlib.sha256(b"".join((root / p).read_bytes() for p in _CODE)).hexdigest()[:12]
    key = f"{config_digest(tiny_cfg.train)[:12]}-{code}"
    cache = getattr(request.config, "cache", None)
    folder = Path(cache.mkdir(f"franca-tiny-pretrained-{key}")) if cache is not None else None
    if folder is not None and (folder / "checkpoint.pt").is_file():
        return folder / "checkpoint.pt"
    return pretrain_tiny(tiny_cfg, shared_data, folder or tmp_path_factory.mktemp("tiny-pretrained"))

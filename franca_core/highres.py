"""High-resolution adaptation: resize the position-embedding grid, re-initialise the heads, train briefly.

Reference: Franca (arXiv 2507.14137) "High-resolution fine-tuning" and DINOv2 (arXiv 2304.07193) section 4
("adaptive resolution": a short final phase at 518 px); FRANCA_METHOD.md "High-resolution adaptation". From the
pretrained TEACHER backbone, the learned (1, prefix + h*w, D) position table is resampled from the old grid to
``global_size / patch`` per side (bicubic, antialiased: timm's ``resample_abs_pos_embed``; the prefix (CLS) slot
is copied), the DINO / iBOT heads start fresh, and the whole model trains with the same losses through the same
``FrancaTrainer`` with the global crops at ``global_size`` for ``steps`` iterations: in one process through
``run_steps`` here (``adapt_highres``), or on Ray Train by the highres stage (``tasks/highres.py``), whose workers
start from ``resized_backbone`` through ``load_initial_backbone``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.layers import resample_abs_pos_embed
from torch.utils.data import Dataset

from franca_core.config import HighresConfig, ModelConfig, TrainConfig
from franca_core.data.multicrop_loader import multicrop_loader
from franca_core.models.backbone import FrancaViT, build_backbone
from franca_core.train.loop import run_steps
from franca_core.train.trainer import Batch, FrancaTrainer


def resize_pos_embed(pos_embed: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                     num_prefix: int = 1) -> torch.Tensor:
    """(1, num_prefix + h*w, D) -> (1, num_prefix + H*W, D), bicubic + antialias; identity when the grids match."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed.clone()  # exact: no interpolation round trip at the original resolution
    expected = num_prefix + old_grid[0] * old_grid[1]
    if pos_embed.shape[1] != expected:
        raise ValueError(f"position table has {pos_embed.shape[1]} slots; a {old_grid} grid with {num_prefix} "
                         f"prefix slot(s) needs {expected}")
    return resample_abs_pos_embed(pos_embed, new_size=list(new_grid), old_size=list(old_grid),
                                  num_prefix_tokens=num_prefix, interpolation="bicubic", antialias=True)


def resized_backbone(backbone: FrancaViT, model_cfg: ModelConfig, img_size: int) -> tuple[FrancaViT, ModelConfig]:
    """A new backbone for ``img_size`` with ``backbone``'s weights and its position grid resized."""
    if img_size % model_cfg.patch_size:
        raise ValueError(f"high-res size {img_size} is not a multiple of the patch size {model_cfg.patch_size}")
    new_cfg = ModelConfig.model_validate({**model_cfg.model_dump(), "img_size": img_size})
    new = build_backbone(new_cfg, drop_path=0.0)
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    num_prefix = 0 if backbone.no_embed_class else backbone.num_prefix_tokens
    state["pos_embed"] = resize_pos_embed(state["pos_embed"], tuple(backbone.patch_embed.grid_size),
                                          tuple(new.patch_embed.grid_size), num_prefix)
    new.load_state_dict(state)
    return new, new_cfg


def highres_train_config(train: TrainConfig, hr: HighresConfig) -> TrainConfig:
    """The pretraining recipe moved to the high-res phase: sizes, lr, warmup, drop path, run length."""
    patch = train.model.patch_size
    for name, size in (("global_size", hr.global_size), ("local_size", hr.local_size)):
        if size % patch:
            raise ValueError(f"highres.{name} {size} is not a multiple of the patch size {patch}")
    steps = max(hr.steps, 1)
    warmup = min(hr.warmup_steps, steps)
    data = train.model_dump()
    data["model"].update(img_size=hr.global_size, drop_path=hr.drop_path)
    data["crops"].update(global_size=hr.global_size, local_size=hr.local_size)
    data["optim"].update(total_steps=steps, warmup_steps=warmup, base_lr=hr.base_lr,
                         batch_size=hr.batch_size or train.optim.batch_size,
                         # fresh heads: hold the prototypes during (at most) the warmup, as pretraining does
                         freeze_last_layer_steps=min(train.optim.freeze_last_layer_steps, warmup))
    data["loss"].update(teacher_temp_warmup_steps=min(train.loss.teacher_temp_warmup_steps, warmup))
    return TrainConfig.model_validate(data)


def load_initial_backbone(trainer: FrancaTrainer, state: Mapping[str, torch.Tensor]) -> None:
    """Student and teacher backbones start from ``state`` (the resized pretrained teacher); the heads stay fresh."""
    for model in (trainer.student_core, trainer.teacher):
        model.backbone.load_state_dict(state)


@dataclass
class HighresResult:
    """The adapted teacher backbone, its config and the trainer (for a full checkpoint)."""

    backbone: FrancaViT
    train_cfg: TrainConfig
    trainer: FrancaTrainer
    history: list[dict[str, Any]] = field(default_factory=list)


def adapt_highres(train_cfg: TrainConfig, hr: HighresConfig, teacher_backbone: FrancaViT,
                  dataset: Dataset | Callable[[TrainConfig], Iterable[Batch]],
                  on_log: Callable[[dict[str, Any]], None] | None = None,
                  max_seconds: float | None = None) -> HighresResult:
    """Resize, re-initialise the heads and train for ``hr.steps`` at ``hr.global_size``.

    Args:
        train_cfg: the pretraining ``train`` section (architecture and losses).
        hr: the ``highres`` section.
        teacher_backbone: the pretrained teacher backbone (at ``train_cfg.model.img_size``).
        dataset: images to train on (items ``(PIL image, ...)``), or a function of the high-res ``TrainConfig``
            returning a batch iterable (e.g. the shard stream of ``franca_core.data.shards.build_loader``).
        max_seconds: optional wall budget (stops early; the result then has fewer steps).
    """
    cfg = highres_train_config(train_cfg, hr)
    resized, _ = resized_backbone(teacher_backbone, train_cfg.model, hr.global_size)
    torch.manual_seed(cfg.seed)
    trainer = FrancaTrainer(cfg)  # new DINO / iBOT heads: the re-initialisation
    load_initial_backbone(trainer, resized.state_dict())
    history: list[dict[str, Any]] = []
    if hr.steps > 0:
        loader = dataset(cfg) if callable(dataset) else multicrop_loader(cfg, dataset)
        history = run_steps(trainer, loader, hr.steps, on_log, cfg.log_every, max_seconds)
    return HighresResult(trainer.teacher.backbone.eval(), cfg, trainer, history)

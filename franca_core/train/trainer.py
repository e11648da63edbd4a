"""The Franca training step, usable from any driver (a plain loop, Ray Train): batch in, metrics out.

Reference: ``dinov2/train/ssl_meta_arch.py: forward_backward`` split into ``teacher_targets``, ``student_outputs``
and ``compute_losses`` (STYLE.md), and ``valeoai/Franca`` for the Matryoshka levels. One step:

1. teacher (EMA, no grad) on the unmasked global crops -> Sinkhorn-Knopp targets per Matryoshka level, for the CLS
   (DINO) and the masked patches (iBOT);
2. student on masked global crops and local crops -> logits per level;
3. loss = sum over levels of (DINO + iBOT) + 0.1 * KoLeo(full-dim CLS of each global crop);
4. backward, grad clip 3.0 per module, AdamW with the scheduled lr / wd, EMA update of the teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from franca_core.checkpoint import rng_state, set_rng_state
from franca_core.config import TrainConfig
from franca_core.losses.centering import TeacherCentering
from franca_core.losses.dino import dino_loss
from franca_core.losses.ibot import ibot_loss
from franca_core.losses.koleo import koleo_loss
from franca_core.losses.sinkhorn import sinkhorn_knopp
from franca_core.models.student_teacher import FrancaModel, Outputs, build_student_teacher, ema_update
from franca_core.schedules import Schedules
from franca_core.train.optimizer import apply_schedule, build_optimizer
from franca_core.train.precision import Precision, enable_tf32, resolve_precision

Batch = dict[str, torch.Tensor]
N_GLOBAL = 2


class FrancaTrainer:
    """Student, teacher, optimiser and schedules of one run, with a ``train_step``.

    Args:
        cfg: the ``train`` section of the pipeline config.
        world_size: number of data-parallel ranks (global batch = batch_size * world_size for lr scaling).
        wrap: wraps the student for data parallelism (e.g. ``ray.train.torch.prepare_model``); identity by default.
    """

    def __init__(self, cfg: TrainConfig, world_size: int = 1,
                 wrap: Callable[[nn.Module], nn.Module] | None = None) -> None:
        self.cfg = cfg
        self.student_core, self.teacher = build_student_teacher(cfg)
        self.student: nn.Module = wrap(self.student_core) if wrap is not None else self.student_core
        # train.compile: the forward passes through torch.compile'd wrappers; the modules themselves (state dicts,
        # EMA, checkpoints) stay as they are. Compiled lazily at the first step, once per crop shape and mask use.
        self._student_forward: Callable[..., Outputs] = torch.compile(self.student) if cfg.compile else self.student
        self._teacher_forward: Callable[..., Outputs] = torch.compile(self.teacher) if cfg.compile else self.teacher
        self.optimizer = build_optimizer(self.student_core, cfg.optim)
        self.schedules = Schedules(cfg.optim, cfg.loss, global_batch=cfg.optim.batch_size * world_size)
        self.step = 0
        self.centering = TeacherCentering(cfg.loss.center_momentum) if cfg.loss.teacher_targets == "centering" \
            else None

    @property
    def device(self) -> torch.device:
        """The device the student's weights are on."""
        return next(self.student_core.parameters()).device

    def to(self, device: torch.device | str) -> FrancaTrainer:
        """Move student and teacher to ``device`` (before ``load_state_dict``, so the optimiser state follows); on
        CUDA also enable TF32 matmuls (``enable_tf32``): the one place training starts on a device."""
        device = torch.device(device)
        self.student_core.to(device)  # in place: the optimiser keeps the same parameter objects
        self.teacher.to(device)
        enable_tf32(device)
        return self

    # ------------------------------------------------------------------------------------------- the step
    @torch.no_grad()
    def teacher_targets(self, batch: Batch, temperature: float) -> dict[str, list[torch.Tensor]]:
        """Targets per level: ``dino`` (2B, K_i) and ``ibot`` (n_masked, K_i); Sinkhorn-Knopp, or DINO's centering
        (``train.loss.teacher_targets``)."""
        empty = batch["local_crops"][:0]
        with self.autocast():
            out = _float(self._teacher_forward(batch["global_crops"], empty, batch["masks"], mask_input=False))
        iters, centering = self.cfg.loss.sinkhorn_iters, self.centering
        targets: dict[str, list[torch.Tensor]] = {}
        for kind, key in (("dino", "dino_global"), ("ibot", "ibot")):
            levels = out[key]
            assert isinstance(levels, list)
            targets[kind] = [centering(f"{kind}.{i}", t, temperature) if centering is not None
                             else sinkhorn_knopp(t, temperature, iters) for i, t in enumerate(levels)]
        return targets

    def student_outputs(self, batch: Batch) -> Outputs:
        """Student logits on masked global crops and local crops (through the DDP wrapper, if any)."""
        with self.autocast():
            return _float(self._student_forward(batch["global_crops"], batch["local_crops"], batch["masks"]))

    @property
    def precision(self) -> Precision:
        """``train.precision`` resolved for the device the student is on (``auto``: bf16 where it is native)."""
        return resolve_precision(self.cfg.precision, next(self.student_core.parameters()).device.type)

    def autocast(self) -> torch.autocast:
        """The forward passes' autocast context (``train.precision``); the losses run outside it, in float32."""
        device = next(self.student_core.parameters()).device.type
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def compute_losses(self, out: Outputs, targets: dict[str, list[torch.Tensor]],
                       masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms: per-level DINO and iBOT, KoLeo, and their weighted total."""
        lc = self.cfg.loss
        losses: dict[str, torch.Tensor] = {}
        dino_terms, ibot_terms = [], []
        for i, (s_g, s_l, t) in enumerate(zip(out["dino_global"], out["dino_local"], targets["dino"])):
            dino_terms.append(dino_loss(s_g, s_l, t, N_GLOBAL, lc.student_temp))
            losses[f"dino_l{i}"] = dino_terms[-1]
        for i, (s, t) in enumerate(zip(out["ibot"], targets["ibot"])):
            ibot_terms.append(ibot_loss(s, t, masks, lc.student_temp))
            losses[f"ibot_l{i}"] = ibot_terms[-1]
        cls = out["cls_global"]
        assert isinstance(cls, torch.Tensor)
        losses["dino"] = torch.stack(dino_terms).sum()
        losses["ibot"] = torch.stack(ibot_terms).sum()
        losses["koleo"] = sum((koleo_loss(c) for c in cls.chunk(N_GLOBAL)), cls.new_zeros(()))
        losses["loss"] = lc.dino_weight * losses["dino"] + lc.ibot_weight * losses["ibot"] + \
            lc.koleo_weight * losses["koleo"]
        return losses

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One optimisation step; returns the loss terms and schedule values as floats."""
        values = self.schedules.at(self.step)
        apply_schedule(self.optimizer, values)
        targets = self.teacher_targets(batch, values.teacher_temp)
        losses = self.compute_losses(self.student_outputs(batch), targets, batch["masks"])
        if not torch.isfinite(losses["loss"]):
            raise FloatingPointError(f"non-finite loss at step {self.step}: {losses['loss'].item()}")
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        core = self.student_core
        for module in (core.backbone, core.dino_head, core.ibot_head):  # per module, as DINOv2 clips
            nn.utils.clip_grad_norm_(module.parameters(), self.cfg.optim.clip_grad, foreach=True)
        self.optimizer.step()
        ema_update(self.teacher, core, values.momentum)
        self.step += 1
        metrics = {k: float(v.detach()) for k, v in losses.items()}
        metrics.update(lr=values.lr, weight_decay=values.weight_decay, momentum=values.momentum,
                       teacher_temp=values.teacher_temp)
        return metrics

    # ------------------------------------------------------------------------------------ checkpointing
    def state_dict(self, data_state: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit: weights, optimiser, step, config, RNG, data position."""
        return {
            "student": self.student_core.state_dict(),
            "teacher": self.teacher.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "config": self.cfg.model_dump(mode="json"),
            "rng": rng_state(),
            "data": data_state or {},
            "centering": self.centering.state_dict() if self.centering is not None else {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> dict[str, Any]:
        """Restore a ``state_dict``; returns its data position. Raises on another architecture."""
        if state["config"]["model"] != self.cfg.model.model_dump(mode="json"):
            raise ValueError(f"checkpoint is of another architecture: {state['config']['model']} "
                             f"!= {self.cfg.model.model_dump(mode='json')}")
        self.student_core.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        set_rng_state(state["rng"])
        if self.centering is not None:
            self.centering.load_state_dict(state.get("centering", {}), next(self.student_core.parameters()).device)
        return dict(state.get("data", {}))


def _float(out: Outputs) -> Outputs:
    """Outputs as float32, so Sinkhorn-Knopp and the losses never see bfloat16."""
    return {k: [t.float() for t in v] if isinstance(v, list) else v.float() for k, v in out.items()}


def teacher_backbone(model: FrancaModel) -> nn.Module:
    """The backbone a pretraining run produces (the teacher's)."""
    return model.backbone

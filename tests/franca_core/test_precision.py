from __future__ import annotations

import pytest
import torch

from franca_core.config import load_config
from franca_core.train import precision
from franca_core.train.precision import resolve_precision
from franca_core.train.trainer import FrancaTrainer

SMALL = ["train.model.depth=1", "train.optim.batch_size=2", "train.crops.n_local=1"]


def _fake_cpu(monkeypatch: pytest.MonkeyPatch, bf16: bool, amx: bool = False) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


@pytest.mark.parametrize(("bf16", "amx", "expected"), [(False, False, "fp32"), (True, False, "bf16"),
                                                       (False, True, "bf16")])
def test_resolve_precision__auto_follows_native_bf16_on_cpu(monkeypatch: pytest.MonkeyPatch, bf16: bool,
                                                            amx: bool, expected: str) -> None:
    _fake_cpu(monkeypatch, bf16, amx)
    assert resolve_precision("auto", "cpu") == expected


def test_resolve_precision__explicit_settings_kept_and_unknown_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_cpu(monkeypatch, bf16=False)
    assert resolve_precision("bf16", "cpu") == "bf16"  # asked for explicitly: slow where emulated, not refused
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("auto", "mps") == "fp32"
    with pytest.raises(ValueError, match="train.precision must be auto, fp32 or bf16"):
        resolve_precision("fp16", "cpu")


def test_native_bf16__a_torch_without_the_probes_gets_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert not precision.native_bf16("cpu")


@pytest.mark.parametrize(("native", "dtype"), [(False, torch.float32), (True, torch.bfloat16)])
def test_trainer__auto_precision_runs_the_backbone_in_the_resolved_dtype(monkeypatch: pytest.MonkeyPatch,
                                                                        native: bool, dtype: torch.dtype) -> None:
    _fake_cpu(monkeypatch, bf16=native)
    cfg = load_config("tiny", SMALL).train
    assert cfg.precision == "auto"  # the tiny profile's setting
    trainer = FrancaTrainer(cfg)
    assert trainer.precision == ("bf16" if native else "fp32")
    seen: list[torch.dtype] = []
    trainer.student_core.backbone.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.no_grad(), trainer.autocast():
        trainer.student_core.backbone.forward_masked(torch.rand(1, 3, cfg.crops.global_size, cfg.crops.global_size))
    assert seen == [dtype]

"""``eval.device`` and ``eval.num_gpus`` say where the rasa and evaluate stages run, not what they compute, as
``train.compile`` says how pretraining runs: they stay out of the stages' keys (issue 19); a field that does change
the output still changes them."""

from __future__ import annotations

from franca_core.config import load_config
from tasks.common.contract import load_stage
from tasks.common.store import StageResult

MODEL = StageResult(stage="pretrain", uri="/m", input_digest="a" * 64, digest="b" * 64)
OTHER = StageResult(stage="dedup", uri="/d", input_digest="c" * 64, digest="d" * 64)


def test_key__eval_device_and_gpus_are_operational_for_rasa_and_evaluate() -> None:
    for name, inputs in (("rasa", {"model": MODEL, "dataset": OTHER}), ("evaluate", {"model": MODEL, "rasa": OTHER})):
        stage = load_stage(name)
        key = stage.key(load_config("tiny"), inputs).digest
        moved = load_config("tiny", ["eval.device=cuda", "eval.num_gpus=1"])
        assert stage.key(moved, inputs).digest == key, name
        assert stage.key(load_config("tiny", ["eval.seed=7"]), inputs).digest != key, name


def test_key__train_compile_is_operational_for_pretrain() -> None:
    pretrain = load_stage("pretrain")
    key = pretrain.key(load_config("tiny"), {"dataset": OTHER}).digest
    assert pretrain.key(load_config("tiny", ["train.compile=true"]), {"dataset": OTHER}).digest == key
    assert pretrain.key(load_config("tiny", ["train.seed=3"]), {"dataset": OTHER}).digest != key

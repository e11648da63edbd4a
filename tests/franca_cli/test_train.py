"""``franca train``: a few steps write the checkpoint, metrics and loss curve and print the JSON summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from franca_cli.main import main

FEW = ["data.synthetic.n_images=100", "data.synthetic.image_size=32", "train.model.img_size=32",
       "train.crops.global_size=32", "train.crops.local_size=16", "train.model.depth=1", "train.loader_workers=0",
       "train.optim.batch_size=16", "train.optim.total_steps=4", "train.optim.warmup_steps=1", "train.log_every=2"]


def test_train__writes_outputs_and_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--out", str(tmp_path), *FEW]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert set(out) == {"steps", "seconds", "loss_first", "loss_last", "knn_top1", "checkpoint"}
    assert out["steps"] == 4 and set(out["knn_top1"]) == {"teacher", "random_init"}
    assert "step     4/4  loss" in captured.err
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [h["step"] for h in metrics["history"]] == [2, 4]
    assert (tmp_path / "checkpoint.pt").is_file() and (tmp_path / "loss.png").is_file()

"""``franca bench loader`` runs the real loader end to end and prints its figures as JSON (no timing asserted)."""

from __future__ import annotations

import json

import pytest

from franca_cli.main import main


def test_bench_loader__tiny_profile_prints_per_core_figures_per_source(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "loader", "--profile", "tiny", "--images", "64", "--batches", "3", "--rounds", "1",
                 "--source-px", "0", "96", "--workers", "1", "train.optim.batch_size=16"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["crops"] == "2 x 48 + 2 x 24 px" and out["batch_size"] == 16 and out["torch_threads"] == 1
    assert set(out["by_source"]) == {"as_stored", "96px"}
    for row in out["by_source"].values():
        assert row["images_per_s_per_core"] > 0 and row["workers"] == 1 and row["workers_images_per_s"] > 0
        assert set(row["breakdown_ms_per_image"]) == {"decode", "global_crops", "local_crops", "collate"}
    assert out["images_per_s_per_core"] == out["by_source"]["as_stored"]["images_per_s_per_core"]

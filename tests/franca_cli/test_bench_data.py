"""``franca bench dedup`` / ``franca bench download`` print JSON with the keys issue 3 names (tiny sizes)."""

from __future__ import annotations

import json

import pytest

from franca_cli.main import main


def test_bench_dedup__json_keys_and_planted_duplicates_found(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "dedup", "--n", "800"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"images_per_s_per_core", "hashes_per_s", "time_ratio_100k_25k"} <= set(out)
    assert out["found"]["exact_duplicate"] == out["planted"]["exact"] == 24
    assert out["found"]["near_duplicate"] >= 0.95 * out["planted"]["near"]


@pytest.mark.slow
def test_bench_download__json_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "download", "--n", "120", "--repeats", "2", "data.download.shard_size=60"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"img2dataset_images_per_s", "raw_http_images_per_s", "ratio"} <= set(out)
    assert out["img2dataset_successes"] == 120 and out["ratio"] > 0 and len(out["runs"]) == 2

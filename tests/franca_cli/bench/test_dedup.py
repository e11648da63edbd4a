"""``franca bench dedup`` prints JSON with the keys issue 3 names and finds the planted duplicates (tiny size)."""

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

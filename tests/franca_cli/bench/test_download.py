"""``franca bench download`` prints JSON with the keys issue 3 names (a tiny served corpus)."""

from __future__ import annotations

import json

import pytest

from franca_cli.main import main


@pytest.mark.slow
def test_bench_download__json_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "download", "--n", "120", "--repeats", "2", "data.download.shard_size=60"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"img2dataset_images_per_s", "raw_http_images_per_s", "ratio"} <= set(out)
    assert out["img2dataset_successes"] == 120 and out["ratio"] > 0 and len(out["runs"]) == 2

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from franca_cli.main import build_parser, main
from franca_core.train.precision import resolve_precision


def test_main__help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "train", "bench"):
        assert command in out


def test_main__config_error_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "step", "--profile", "tiny", "train.optim.bogus=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["franca: config error: config key 'train.optim.bogus': unknown key"]


def test_parser__unknown_profile_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--profile", "vit7"]) == 2
    assert "unknown profile 'vit7'" in capsys.readouterr().err


def test_bench_step__prints_json_keys() -> None:
    overrides = ["train.model.depth=1", "train.optim.batch_size=4", "train.crops.n_local=1"]
    proc = subprocess.run([sys.executable, "-m", "franca_cli.main", "bench", "step", "--profile", "tiny",
                           "--rounds", "1", "--steps", "1", *overrides], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert {"step_images_per_s", "backbone_images_per_s", "efficiency", "peak_rss_mb"} <= set(result)
    assert 0 < result["efficiency"] and result["peak_rss_mb"] > 0
    # The tiny profile's precision (auto) as resolved on this CPU; a lower one is timed against fp32 alongside.
    assert result["precision_setting"] == "auto"
    assert result["precision"] == resolve_precision("auto", "cpu")
    assert ("speedup_vs_fp32" in result) == (result["precision"] == "bf16")


def test_build_parser__every_command_has_a_handler() -> None:
    parser = build_parser()
    for argv in (["demo"], ["train"], ["bench", "step"]):
        assert callable(parser.parse_args(argv).func)

"""``franca bench``: every module named in ``BENCHMARKS`` is a subcommand with its own help and handler."""

from __future__ import annotations

import importlib

import pytest

from franca_cli.bench import BENCHMARKS
from franca_cli.main import build_parser, main


def test_register__one_subcommand_per_benchmark_module(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert {"select", "download", "dedup", "step", "train", "loader", "gpu", "quality", "eval", "ablation",
            "pipeline", "cache"} <= set(BENCHMARKS)
    for name in BENCHMARKS:
        assert f"    {name} " in out, f"`franca bench --help` does not list {name}"


@pytest.mark.parametrize("name", BENCHMARKS)
def test_register__subcommand_has_the_module_handler_and_docstring_help(name: str,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(f"franca_cli.bench.{name}")
    assert build_parser().parse_args(["bench", name]).func is module.run
    with pytest.raises(SystemExit) as exc:
        main(["bench", name, "--help"])
    assert exc.value.code == 0
    assert f"franca bench {name}" in capsys.readouterr().out  # the module docstring's usage lines

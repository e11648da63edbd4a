"""``franca``: one console script for the pipeline.

Commands (each in its own module of this package, registered in ``COMMANDS``)::

    franca demo                                 # the embedded default job (what `make demo` runs)
    franca train --profile tiny key=value ...   # plain-loop pretraining on generated images
    franca bench step --profile tiny            # training-step efficiency (JSON)

Every command takes ``--profile`` (tiny, vitb14, vitl14, vitg14) or ``--config file.yaml`` and dotted
``key=value`` overrides; a wrong key or value exits with status 2 and one line naming the key.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from franca_core.config import ConfigError
from infra.offline import apply_offline_env
from tasks.common.redact import redact

# (module, description); each module defines ``register(subparsers)``; its parser sets ``func``.
COMMANDS: list[str] = [
    "franca_cli.demo",
    "franca_cli.train",
    "franca_cli.bench",
    "franca_cli.stack",
    "franca_cli.lineage",
    "franca_cli.run",
    "franca_cli.eval",
    "franca_cli.rasa",
    "franca_cli.features",
    "franca_cli.export",
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every command registered."""
    parser = argparse.ArgumentParser(prog="franca", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: offline settings first, then dispatch; config errors exit 2 with one line."""
    apply_offline_env()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"franca: config error: {redact(exc)}", file=sys.stderr)  # a bad value may carry a credential
        return 2


if __name__ == "__main__":
    sys.exit(main())

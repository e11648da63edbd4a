"""Options shared by every command: the config (profile or YAML) and dotted overrides."""

from __future__ import annotations

import argparse

from franca_core.config import PipelineConfig, load_config


def add_config_options(parser: argparse.ArgumentParser, default_profile: str = "tiny") -> None:
    """``--profile NAME`` / ``--config FILE.yaml`` and trailing ``key.path=value`` overrides."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--profile", default=default_profile, help="tiny, vitb14, vitl14 or vitg14")
    group.add_argument("--config", default=None, help="a YAML config (may name a base `profile:`)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.seed=1")


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """Load the config the options describe."""
    return load_config(args.config or args.profile, args.overrides)

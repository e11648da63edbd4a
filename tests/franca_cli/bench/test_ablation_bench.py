from __future__ import annotations

from franca_cli.bench import ablation
from franca_cli.main import build_parser
from franca_core.config import load_config


def test_overrides__a_valid_config_at_the_stated_budget_with_the_users_overrides_last() -> None:
    args = build_parser().parse_args(["bench", "ablation", "--steps", "50", "--bank", "500", "--queries", "100",
                                      "--variants", "franca,centering", "train.seed=3"])
    cfg = load_config(args.profile, ablation.overrides(args))
    assert cfg.train.optim.total_steps == 50 and cfg.train.seed == 3
    assert cfg.eval.max_images_per_set == {"tinyimagenet-train": 500, "tinyimagenet-val": 100}
    assert cfg.data.source.endswith("tinyimagenet-train.parquet") and not cfg.dedup.include_eval_datasets
    assert args.variants == "franca,centering"

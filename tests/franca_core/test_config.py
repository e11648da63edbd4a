from __future__ import annotations

from pathlib import Path

import pytest

from franca_core.config import PROFILES, ConfigError, config_digest, load_config


@pytest.mark.parametrize("profile", PROFILES)
def test_load_config__every_profile_validates(profile: str) -> None:
    cfg = load_config(profile)
    assert cfg.profile == profile
    assert cfg.train.model.embed_dim % cfg.train.model.num_heads == 0


def test_load_config__overrides_apply_with_types() -> None:
    cfg = load_config("tiny", ["train.optim.total_steps=7", "train.crops.n_local=0", "eval.knn_k=[5, 9]"])
    assert cfg.train.optim.total_steps == 7 and cfg.train.crops.n_local == 0 and cfg.eval.knn_k == [5, 9]


def test_load_config__unknown_key_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"train\.optim\.learning_rate': unknown key"):
        load_config("tiny", ["train.optim.learning_rate=1"])


def test_load_config__bad_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"train\.optim\.base_lr'.*greater than 0"):
        load_config("tiny", ["train.optim.base_lr=-1"])
    with pytest.raises(ConfigError, match=r"train\.model"):
        load_config("tiny", ["train.model.num_heads=5"])


def test_load_config__unknown_profile_and_missing_file() -> None:
    with pytest.raises(ConfigError, match="unknown profile 'vit7'"):
        load_config("vit7")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nope.yaml")


def test_load_config__yaml_file_on_top_of_profile(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("profile: tiny\ntrain:\n  optim: {total_steps: 11}\n")
    cfg = load_config(path, ["train.seed=3"])
    assert cfg.train.optim.total_steps == 11 and cfg.train.model.embed_dim == 192 and cfg.train.seed == 3


def test_config_digest__changes_with_content_only() -> None:
    a, b = load_config("tiny"), load_config("tiny")
    assert config_digest(a.train) == config_digest(b.train)
    assert config_digest(a.train) != config_digest(load_config("tiny", ["train.seed=1"]).train)


def test_config__is_frozen() -> None:
    cfg = load_config("tiny")
    with pytest.raises(Exception, match="frozen"):
        cfg.train.seed = 3  # type: ignore[misc]

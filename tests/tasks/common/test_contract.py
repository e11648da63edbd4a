"""The stage contract (tasks/common/contract.py): one declaration gives the key, the folder and the config view."""

from __future__ import annotations

from pathlib import Path

import pytest

from franca_core.config import DownloadConfig, load_config
from tasks.common.contract import STAGE_NAMES, UndeclaredFieldError, load_stage, stage
from tasks.common.digests import DigestMemo
from tasks.common.runner import run_stage
from tasks.common.store import StageResult, Workspace

UPSTREAM = StageResult(stage="select", uri="/x", input_digest="a" * 64, digest="b" * 64)


def test_view__declared_section_is_typed_and_undeclared_field_fails() -> None:
    view = load_stage("download").view(load_config("tiny"))
    assert isinstance(view.data.download, DownloadConfig) and view.data.download.threads == 16
    with pytest.raises(UndeclaredFieldError, match=r"stage 'download' read config field 'data.select'"):
        _ = view.data.select
    with pytest.raises(UndeclaredFieldError, match="'train'"):
        _ = view.train


def test_view__a_leaf_declaration_opens_only_that_leaf() -> None:
    view = load_stage("rasa").view(load_config("tiny"))
    assert view.train.model.img_size == 64 and view.eval.seed == 0
    with pytest.raises(UndeclaredFieldError, match="'train.model.depth'"):
        _ = view.train.model.depth


def test_run_stage__a_stage_reading_an_undeclared_field_fails(tmp_path: Path) -> None:
    @stage("select", reads=("data.select",), inputs=("urls",))
    def sneaky(cfg, ws: Workspace, urls: StageResult) -> StageResult:
        return ws.result("d", {}, {"threads": cfg.data.download.threads})  # not declared

    cfg = load_config("tiny", [f"storage.root={tmp_path}"])
    with pytest.raises(UndeclaredFieldError, match="data.download"):
        run_stage(sneaky, cfg, urls=UPSTREAM)
    assert not list((tmp_path / "select").glob("*/result.json"))


def test_key__config_it_reads_changes_it_others_do_not() -> None:
    download = load_stage("download")
    key = download.key(load_config("tiny"), {"subset": UPSTREAM}).digest
    assert download.key(load_config("tiny", ["train.seed=5"]), {"subset": UPSTREAM}).digest == key
    assert download.key(load_config("tiny", ["data.download.threads=3"]), {"subset": UPSTREAM}).digest != key


def test_key__upstream_key_or_digest_changes_it() -> None:
    download, cfg = load_stage("download"), load_config("tiny")
    key = download.key(cfg, {"subset": UPSTREAM}).digest
    assert download.key(cfg, {"subset": UPSTREAM.model_copy(update={"digest": "c" * 64})}).digest != key
    assert download.key(cfg, {"subset": UPSTREAM.model_copy(update={"input_digest": "c" * 64})}).digest != key
    with pytest.raises(ValueError, match=r"takes inputs \['subset'\]"):
        download.key(cfg, {})


def test_key__a_file_enters_by_content_not_by_path(tmp_path: Path) -> None:
    memo = DigestMemo(tmp_path / "memo.sqlite")
    evaluate = load_stage("evaluate")
    inputs = {"model": UPSTREAM, "rasa": UPSTREAM}
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    a.write_bytes(b"one")
    b.write_bytes(b"one")
    key = evaluate.key(load_config("tiny", [f"eval.datasets={{x: {a}}}"]), inputs, memo)
    same_content = evaluate.key(load_config("tiny", [f"eval.datasets={{x: {b}}}"]), inputs, memo)
    assert key.parts["files"] == same_content.parts["files"]
    a.write_bytes(b"two")  # rewritten in place
    assert evaluate.key(load_config("tiny", [f"eval.datasets={{x: {a}}}"]), inputs, memo).digest != key.digest
    with pytest.raises(FileNotFoundError, match="config field eval.datasets.x names .*absent"):
        evaluate.key(load_config("tiny", [f"eval.datasets={{x: {tmp_path / 'absent'}}}"]), inputs, memo)


def test_key__rasa_images_seed_is_in_the_key() -> None:
    rasa, inputs = load_stage("rasa"), {"model": UPSTREAM, "dataset": UPSTREAM}
    assert rasa.key(load_config("tiny", ["eval.seed=1"]), inputs).digest != rasa.key(load_config("tiny"), inputs).digest


def test_key__eval_sets_enter_dedup_only_when_it_decontaminates_against_them(tmp_path: Path) -> None:
    dedup, inputs = load_stage("dedup"), {"shards": UPSTREAM}
    (tmp_path / "e.parquet").write_bytes(b"eval")
    on = [f"eval.datasets={{x: {tmp_path / 'e.parquet'}}}"]
    off = [*on, "dedup.include_eval_datasets=false"]
    key_on, key_off = dedup.key(load_config("tiny", on), inputs), dedup.key(load_config("tiny", off), inputs)
    (tmp_path / "e.parquet").write_bytes(b"changed")
    assert dedup.key(load_config("tiny", on), inputs).digest != key_on.digest
    assert dedup.key(load_config("tiny", off), inputs).digest == key_off.digest


def test_every_stage__declares_fields_that_exist() -> None:
    cfg = load_config("tiny")
    for name in STAGE_NAMES:
        declared = load_stage(name)
        for dotted in declared.reads + declared.operational:
            node = cfg
            for part in dotted.split("."):
                node = getattr(node, part)  # raises AttributeError for a misspelt declaration

"""Stage 3 (tasks/dedup.py): manifest, dataset digest, planted-duplicate recall, decontamination, no-op rerun."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from franca_core.data.corpus import score_dedup
from franca_core.dedup.digest import dataset_digest
from franca_core.dedup.fingerprint import fingerprint_shards
from tasks.common.runner import run_stage
from tasks.common.tables import read_parquet
from tasks.dedup import MANIFEST_SCHEMA


def test_dedup__manifest_columns_and_digest(data_run) -> None:
    manifest = read_parquet(data_run.deduped.files["manifest"])
    assert manifest.schema.equals(MANIFEST_SCHEMA, check_metadata=False)
    rows = manifest.to_pylist()
    assert len(rows) == data_run.downloaded.stats["success"] == data_run.deduped.stats["images"]
    kept = [r for r in rows if r["kept"]]
    assert data_run.deduped.digest == dataset_digest((r["sample_id"], r["content_hash"]) for r in kept)
    assert all(r["reason"] == "" for r in kept)
    assert {r["reason"] for r in rows if not r["kept"]} == {"exact_duplicate", "near_duplicate"}
    assert all(Path(r["shard"]).is_file() and r["url"] and r["caption"] and len(r["phash"]) == 16 for r in rows)


def test_dedup__planted_duplicates_found_few_uniques_lost(data_run) -> None:
    manifest = read_parquet(data_run.deduped.files["manifest"], columns=["sample_id", "kept"]).to_pydict()
    score = score_dedup(read_parquet(data_run.source.files["annotations"]),
                        dict(zip(manifest["sample_id"], manifest["kept"])))
    assert score["exact_duplicate_planted"] == 12 and score["exact_duplicate_recall"] == 1.0, score
    assert score["near_duplicate_planted"] == 12 and score["near_duplicate_recall"] >= 0.95, score
    assert score["unique_false_drop_rate"] <= 0.01, score
    stats = data_run.deduped.stats
    assert stats["exact_duplicate"] == 12 and stats["kept"] == stats["images"] - 12 - stats["near_duplicate"]


def test_dedup__stats_carry_every_cause(data_run) -> None:
    keys = {"filtered", "success", "dead_url", "corrupt", "non_image", "decompression_bomb", "exact_duplicate",
            "near_duplicate", "contaminated", "kept"}
    assert keys <= set(data_run.deduped.stats)
    assert {"subset", "shards", "download_stats", "manifest"} <= set(data_run.deduped.files)


def test_dedup__rerun_is_a_noop_with_the_same_digest(data_run) -> None:
    again = run_stage("dedup", data_run.cfg, shards=data_run.downloaded)
    assert again.cached and again.digest == data_run.deduped.digest


def test_dedup__missing_eval_set_named(data_run) -> None:
    cfg = data_run.cfg.model_copy(update={"dedup": data_run.cfg.dedup.model_copy(
        update={"eval_sets": ["/nonexistent/eval.parquet"]})})
    with pytest.raises(FileNotFoundError, match="dedup.eval_sets names '/nonexistent/eval.parquet'"):
        run_stage("dedup", cfg, shards=data_run.downloaded)


@pytest.mark.slow
def test_dedup__decontaminates_planted_copies_of_eval_images(shared_data: Path, tmp_path: Path,
                                                             make_data_config) -> None:
    val = str(shared_data / "tinyimagenet-val.parquet")
    cfg = make_data_config(tmp_path / "store", "data.synthetic.n_images=150", "data.synthetic.contaminate_count=12",
                           f"data.synthetic.contaminate_from={val}", f"dedup.eval_sets=[{val}]")
    src = run_stage("source", cfg)
    downloaded = run_stage("download", cfg, subset=run_stage("select", cfg, urls=src))
    result = run_stage("dedup", cfg, shards=downloaded)
    manifest = pq.read_table(result.files["manifest"], columns=["sample_id", "reason"]).to_pydict()
    reason = dict(zip(manifest["sample_id"], manifest["reason"]))
    faults = read_parquet(src.files["annotations"], columns=["sample_id", "fault"]).to_pydict()
    planted = {s for s, f in zip(faults["sample_id"], faults["fault"]) if f == "contaminated"}
    assert len(planted) == 12 and all(reason[s] == "contaminated" for s in planted)
    assert result.stats["contaminated"] == 12 and result.stats["eval_images"] == 10_000
    dups = read_parquet(result.files["duplicates"]).to_pylist()
    assert all(d["duplicate_of"].startswith(val + "#val/") for d in dups if d["reason"] == "contaminated")


def test_fingerprint_shards__two_worker_processes_same_rows(data_run) -> None:
    tars = sorted(str(p) for p in Path(data_run.downloaded.files["shards"]).glob("*.tar"))[:3]
    one, two = fingerprint_shards(tars, workers=1), fingerprint_shards(tars, workers=2)
    assert one.sample_id == two.sample_id and one.hashes.content_hash == two.hashes.content_hash
    assert (one.hashes.signature == two.hashes.signature).all() and len(one) > 100

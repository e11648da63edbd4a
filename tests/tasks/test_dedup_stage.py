"""Stage 3 (tasks/dedup.py): manifest, dataset digest, planted-duplicate recall, decontamination, no-op rerun,
damaged shards skipped and counted, progress, metadata kept."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Collection
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from franca_core.data.corpus import score_dedup
from franca_core.dedup.digest import dataset_digest
from franca_core.dedup.fingerprint import fingerprint_shards
from tasks.common.runner import run_stage
from tasks.common.store import StageResult
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


def test_dedup__manifest_keeps_each_samples_metadata(data_run) -> None:
    manifest = read_parquet(data_run.deduped.files["manifest"]).to_pylist()
    subset = {r["sample_id"]: r for r in read_parquet(data_run.subset.files["subset"]).to_pylist()}
    samples = {r["sample_id"]: r for r in read_parquet(data_run.downloaded.files["samples"]).to_pylist()}
    for row in manifest:
        source, fetched = subset[row["sample_id"]], samples[row["sample_id"]]
        assert (row["url"], row["caption"], row["license"]) == (source["url"], source["caption"], source["license"])
        assert row["similarity"] == pytest.approx(source["similarity"], rel=1e-6)
        assert (row["original_width"], row["original_height"]) == (fetched["original_width"],
                                                                    fetched["original_height"]) != (None, None)


def _stems(tar: Path) -> list[str]:
    with tarfile.open(tar) as t:
        return list(dict.fromkeys(m.name.split(".", 1)[0] for m in t.getmembers()))


def _rewrite(src: Path, dst: Path, keep: Collection[str] | None = None,
             replace: dict[str, bytes] | None = None) -> None:
    """Copy tar ``src`` to ``dst``: only the samples in ``keep`` (all if None), members in ``replace`` swapped."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for member in tin:
            if keep is not None and member.name.split(".", 1)[0] not in keep:
                continue
            body = (replace or {}).get(member.name, tin.extractfile(member).read())  # type: ignore[union-attr]
            member.size = len(body)
            tout.addfile(member, io.BytesIO(body))


def _as_download(data_run, shards: Path, tag: str) -> StageResult:
    """The data run's download result with its shards swapped for ``shards`` (a distinct key through ``tag``)."""
    files = {**data_run.downloaded.files, "shards": str(shards)}
    return data_run.downloaded.model_copy(update={"files": files, "digest": tag, "input_digest": tag})


@dataclass
class Damaged:
    """Dedup over good shards plus damaged ones, over the same readable samples alone, and what was printed."""

    bad: StageResult
    reference: StageResult
    printed: str
    cut_sample: str
    bad_json_sample: str


@pytest.fixture(scope="module")
def damaged(data_run, tmp_path_factory: pytest.TempPathFactory) -> Damaged:
    """Shards 0-3 good; 4 cut inside its 6th sample's image; 5 with a bad JSON member; 6 empty; 7 not a tar."""
    tars = sorted(Path(data_run.downloaded.files["shards"]).glob("*.tar"))
    assert len(tars) == 8
    root = tmp_path_factory.mktemp("damaged")
    bad, ref = root / "bad", root / "reference"
    for folder in (bad, ref):
        folder.mkdir()
        for tar in tars[:4]:
            shutil.copy(tar, folder / tar.name)
    stems4, stems5 = _stems(tars[4]), _stems(tars[5])
    with tarfile.open(tars[4]) as t:
        image = next(m for m in t.getmembers() if m.name == f"{stems4[5]}.jpg")
    (bad / tars[4].name).write_bytes(tars[4].read_bytes()[:image.offset_data + image.size // 2])
    _rewrite(tars[4], ref / tars[4].name, keep=stems4[:5])
    _rewrite(tars[5], bad / tars[5].name, replace={f"{stems5[3]}.json": b'{"sample_id": '})
    _rewrite(tars[5], ref / tars[5].name, keep=set(stems5) - {stems5[3]})
    (bad / tars[6].name).write_bytes(b"")
    (bad / tars[7].name).write_bytes(b"<html>503 Service Unavailable</html>\n" * 40)
    out = io.StringIO()
    with redirect_stdout(out):
        bad_result = run_stage("dedup", data_run.cfg, shards=_as_download(data_run, bad, "damaged-shards"))
    reference = run_stage("dedup", data_run.cfg, shards=_as_download(data_run, ref, "readable-samples-alone"))
    return Damaged(bad_result, reference, out.getvalue(), stems4[5], stems5[3])


def test_dedup__damaged_shards_skipped_digest_of_the_readable_samples(damaged: Damaged) -> None:
    bad, ref = damaged.bad, damaged.reference
    assert (bad.stats["bad_shards"], bad.stats["bad_members"]) == (3, 2)
    assert (ref.stats["bad_shards"], ref.stats["bad_members"]) == (0, 0)
    assert bad.stats["images"] == ref.stats["images"] > 200 and bad.stats["kept"] == ref.stats["kept"]
    ids = [read_parquet(r.files["manifest"], columns=["sample_id"]).column(0).to_pylist() for r in (bad, ref)]
    assert ids[0] == ids[1] and damaged.cut_sample not in ids[0] and damaged.bad_json_sample not in ids[0]
    assert bad.digest == ref.digest


def test_dedup__bad_shards_listed_with_their_errors(damaged: Damaged) -> None:
    listing = json.loads(Path(damaged.bad.files["bad_shards"]).read_text())
    shards = {Path(s["shard"]).name: (s["error"], s["samples_read"]) for s in listing["bad_shards"]}
    assert shards == {"00004.tar": ("ReadError: unexpected end of data", 5), "00006.tar": ("ReadError: empty file", 0),
                      "00007.tar": ("ReadError: invalid header", 0)}
    members = {(Path(m["shard"]).name, m["sample"]) for m in listing["bad_members"]}
    assert members == {("00004.tar", damaged.cut_sample), ("00005.tar", damaged.bad_json_sample)}
    assert listing["bad_members_total"] == 2
    assert json.loads(Path(damaged.reference.files["bad_shards"]).read_text())["bad_shards"] == []


def test_dedup__prints_progress_with_rate_and_eta(damaged: Damaged) -> None:
    lines = [line for line in damaged.printed.splitlines() if line.startswith("dedup: ") and "images/s" in line]
    images = damaged.bad.stats["images"]
    assert lines and lines[-1].startswith(f"dedup: 8/8 shards, 3 bad, {images} images, "), damaged.printed
    assert lines[-1].endswith("images/s, ETA 00:00:00") and float(lines[-1].split(", ")[3].split()[0]) > 0
    assert "dedup: skipped 3 damaged shards and 2 bad samples (listed in bad_shards.json)" in damaged.printed


def test_dedup__nothing_readable_is_one_clear_error(data_run, tmp_path: Path) -> None:
    tar = sorted(Path(data_run.downloaded.files["shards"]).glob("*.tar"))[0]
    with tarfile.open(tar) as t:
        first = t.next()
    assert first is not None
    (tmp_path / "00000.tar").write_bytes(tar.read_bytes()[:first.offset_data + first.size // 2])  # cut in member 1
    (tmp_path / "00001.tar").write_bytes(b"")
    (tmp_path / "00002.tar").write_bytes(b"garbage" * 100)
    with pytest.raises(ValueError, match=r"no readable image in the 3 tar shards under .*; 3 damaged, e\.g\. "
                                         r".*00000\.tar: ReadError: unexpected end of data"):
        run_stage("dedup", data_run.cfg, shards=_as_download(data_run, tmp_path, "nothing-readable"))

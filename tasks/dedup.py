"""Stage 3 (dedup): webdataset shards -> manifest of kept / dropped samples and the dataset digest.

Exact duplicates (content hash of decoded pixels), decontamination against the evaluation sets
(``dedup.eval_sets`` and, with ``dedup.include_eval_datasets``, every path of ``eval.datasets``) and near duplicates
(ANN search over perceptual signatures): ``franca_core/dedup/near_dup.py``. Output ``<root>/dedup/<key>/``:

- ``manifest.parquet``: one row per downloaded image, columns ``MANIFEST_SCHEMA`` (read by the pretraining stage:
  ``shard`` is the tar's full URI, ``key`` the webdataset key inside it);
- ``duplicates.parquet``: for each dropped row, what it duplicates (a sample id, or ``<eval set>#<key>``);
- ``bad_shards.json``: the shards that were not wholly readable (not a tar, empty, truncated: their readable samples
  are kept) and the skipped samples (bad JSON member, the sample a truncated tar was cut in); counted in the stats as
  ``bad_shards`` and ``bad_members``. Only a set of shards with no readable image at all fails the stage.

Each manifest row keeps the sample's metadata (``franca_core.dedup.metadata.SAMPLE_METADATA``): from the select
subset, else the shard's JSON member, else the download's ``samples.parquet``; null where none has it. Progress
(shards, images, images/s, ETA) is printed while shards are fingerprinted (Prefect's ``log_prints`` logs it).

The result's digest is the dataset digest: sha256 of the sorted (sample_id, content_hash) of kept rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa

from franca_core.config import PipelineConfig
from franca_core.data.image_sets import iter_image_set
from franca_core.dedup.digest import dataset_digest
from franca_core.dedup.fingerprint import Fingerprints, Progress, fingerprint_shards
from franca_core.dedup.hashing import hash_images, phash_hex
from franca_core.dedup.metadata import SAMPLE_METADATA, merge_metadata, read_metadata
from franca_core.dedup.near_dup import deduplicate
from tasks.common.contract import stage
from tasks.common.digests import fs_of, is_local_fs
from tasks.common.store import StageResult, Workspace
from tasks.common.tables import write_parquet

MANIFEST_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("shard", pa.string()), ("key", pa.string()), ("content_hash", pa.string()),
    ("phash", pa.string()), *SAMPLE_METADATA, ("kept", pa.bool_()), ("reason", pa.string())])
PROGRESS_EVERY_S = 5.0
MAX_LISTED_MEMBERS = 1000  # bad_shards.json stays small even if every sample of a huge set has a bad JSON member


def eval_set_paths(cfg: PipelineConfig) -> list[str]:
    """The evaluation sets to decontaminate against, in config order, each once."""
    paths = list(cfg.dedup.eval_sets)
    if cfg.dedup.include_eval_datasets:
        paths += list(cfg.eval.datasets.values())
    return list(dict.fromkeys(paths))


def _eval_fingerprints(paths: list[str], cfg: PipelineConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(phash bits, signatures, '<set>#<key>' names) of every decodable evaluation image."""
    dd, ph, sig, names = cfg.dedup, [], [], []
    for path in paths:
        items = list(iter_image_set(path))
        batch = hash_images([blob for _, blob, _, _ in items], dd.phash_size, dd.signature_size, dd.max_image_pixels)
        ok = np.array([not e for e in batch.error], bool)
        ph.append(batch.phash[ok])
        sig.append(batch.signature[ok])
        names += [f"{path}#{key}" for (key, _, _, _), good in zip(items, ok) if good]
    if not names:
        return np.zeros((0, dd.phash_size**2 // 8), np.uint8), np.zeros((0, 3 * dd.signature_size**2), np.float32), []
    return np.concatenate(ph), np.concatenate(sig), names


def progress_printer(every_s: float = PROGRESS_EVERY_S) -> Callable[[Progress], None]:
    """A ``fingerprint_shards`` progress callback printing the first shard, then every ``every_s`` s, and the last."""
    last = [-float("inf")]

    def report(p: Progress) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s or p.shards_done == p.shards_total:
            last[0] = now
            print(f"dedup: {p}", flush=True)

    return report


def damage_report(fp: Fingerprints) -> tuple[dict[str, int], dict[str, Any]]:
    """(``bad_shards`` / ``bad_members`` counts, the ``bad_shards.json`` listing) of the damaged shards."""
    shards = [{"shard": d.shard, "error": d.error, "samples_read": d.samples} for d in fp.damage if d.error]
    members = [{"shard": d.shard, "sample": key, "error": why} for d in fp.damage for key, why in d.bad_members]
    listing = {"bad_shards": shards, "bad_members": members[:MAX_LISTED_MEMBERS], "bad_members_total": len(members)}
    return {"bad_shards": len(shards), "bad_members": len(members)}, listing


def sample_metadata(fp: Fingerprints, files: dict[str, str]) -> pa.Table:
    """``SAMPLE_METADATA`` of each fingerprinted row: from the subset, else the shard JSON, else ``samples``."""
    sources = {"the select subset": read_metadata(files["subset"]), "the shards' JSON members": fp.json_metadata()}
    if "samples" in files:
        sources["the download's samples.parquet"] = read_metadata(files["samples"])
    return merge_metadata(fp.sample_id, sources)


def decide(fp: Fingerprints, cfg: PipelineConfig) -> tuple[np.ndarray, list[str], list[str], dict[str, int]]:
    """(kept mask, reason, duplicate of, counts) of every fingerprinted row; undecodable rows are dropped."""
    h, dd = fp.hashes, cfg.dedup
    ok = np.array([not e for e in h.error], bool)
    rows = np.flatnonzero(ok)
    eval_ph, eval_sig, eval_names = _eval_fingerprints(eval_set_paths(cfg), cfg)
    decisions = deduplicate([fp.sample_id[i] for i in rows], [h.content_hash[i] for i in rows], h.phash[rows],
                            h.signature[rows], (h.width * h.height)[rows], dd, eval_ph, eval_sig)
    kept, reason, dup_of = np.zeros(len(fp), bool), ["undecodable"] * len(fp), [""] * len(fp)
    for j, i in enumerate(rows):
        kept[i], reason[i] = decisions.kept[j], decisions.reason[j]
        if decisions.reason[j] == "contaminated":
            dup_of[i] = eval_names[decisions.duplicate_of[j]]
        elif decisions.duplicate_of[j] >= 0:
            dup_of[i] = fp.sample_id[rows[decisions.duplicate_of[j]]]
    counts = {**decisions.counts(), "kept": int(kept.sum()), "undecodable": int((~ok).sum()), "images": len(fp),
              "eval_images": len(eval_names)}
    return kept, reason, dup_of, counts


@stage("dedup", reads=("dedup", "eval.datasets"), files=("dedup.eval_sets", "eval.datasets"), inputs=("shards",),
       when={"eval.datasets": "dedup.include_eval_datasets"})
def dedup(cfg: PipelineConfig, ws: Workspace, shards: StageResult) -> StageResult:
    """Deduplicate and decontaminate a download result against the evaluation sets.

    Raises:
        ValueError: no readable image in any shard (the message counts the damaged shards and names the first).
    """
    downloaded, dd = shards, cfg.dedup
    fs, folder = fs_of(downloaded.files["shards"])
    tars = [p if is_local_fs(fs) else fs.unstrip_protocol(p) for p in sorted(fs.glob(f"{folder}/*.tar"))]
    fp = fingerprint_shards(tars, dd.phash_size, dd.signature_size, dd.workers, dd.max_image_pixels,
                            progress_printer())
    bad_counts, bad_listing = damage_report(fp)
    if fp.damage:
        print(f"dedup: skipped {bad_counts['bad_shards']} damaged shards and {bad_counts['bad_members']} bad samples "
              f"(listed in bad_shards.json), e.g. {fp.damage[0].describe()}", flush=True)
    if len(fp) == 0:
        damaged = [d.describe() for d in fp.damage if d.error]
        raise ValueError(f"no readable image in the {len(tars)} tar shards under {downloaded.files['shards']}"
                         + (f"; {len(damaged)} damaged, e.g. {damaged[0]}" if damaged else ""))
    h = fp.hashes
    kept, reason, dup_of, counts = decide(fp, cfg)
    meta = sample_metadata(fp, downloaded.files)
    manifest = pa.table({
        "sample_id": fp.sample_id, "shard": fp.shard, "key": fp.key, "content_hash": h.content_hash,
        "phash": [phash_hex(b) for b in h.phash], **{c: meta.column(c) for c in meta.column_names}, "kept": kept,
        "reason": reason}, schema=MANIFEST_SCHEMA).sort_by("sample_id")
    dropped = [i for i in range(len(fp)) if not kept[i]]
    duplicates = pa.table({"sample_id": [fp.sample_id[i] for i in dropped], "reason": [reason[i] for i in dropped],
                           "duplicate_of": [dup_of[i] for i in dropped]})
    with ws.writing() as tmp:
        write_parquet(manifest, ws.fs, f"{tmp}/manifest.parquet")
        write_parquet(duplicates, ws.fs, f"{tmp}/duplicates.parquet")
        with ws.fs.open(f"{tmp}/bad_shards.json", "w") as f:
            json.dump(bad_listing, f, indent=1)
    stats = {**downloaded.stats, **counts, **bad_counts}
    kept_rows = ((fp.sample_id[i], h.content_hash[i]) for i in range(len(fp)) if kept[i])
    return ws.result(dataset_digest(kept_rows), {
        **{k: v for k, v in downloaded.files.items() if k in ("subset", "shards", "download_stats", "samples")},
        "manifest": "manifest.parquet", "duplicates": "duplicates.parquet", "bad_shards": "bad_shards.json"}, stats)

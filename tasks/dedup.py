"""Stage 3 (dedup): webdataset shards -> manifest of kept / dropped samples and the dataset digest.

Exact duplicates (content hash of decoded pixels), decontamination against the evaluation sets
(``dedup.eval_sets`` and, with ``dedup.include_eval_datasets``, every path of ``eval.datasets``) and near duplicates
(ANN search over perceptual signatures): ``franca_core/dedup/near_dup.py``. Output ``<root>/dedup/<key>/``:

- ``manifest.parquet``: one row per downloaded image, columns ``MANIFEST_SCHEMA`` (read by the pretraining stage:
  ``shard`` is the tar's full URI, ``key`` the webdataset key inside it);
- ``duplicates.parquet``: for each dropped row, what it duplicates (a sample id, or ``<eval set>#<key>``).

The result's digest is the dataset digest: sha256 of the sorted (sample_id, content_hash) of kept rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from franca_core.config import PipelineConfig
from franca_core.data.image_sets import iter_image_set
from franca_core.dedup.digest import dataset_digest
from franca_core.dedup.fingerprint import fingerprint_shards
from franca_core.dedup.hashing import hash_images, phash_hex
from franca_core.dedup.near_dup import deduplicate
from tasks.common.contract import stage
from tasks.common.digests import fs_of, is_local_fs
from tasks.common.store import StageResult, Workspace
from tasks.common.tables import read_parquet, write_parquet

MANIFEST_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("shard", pa.string()), ("key", pa.string()), ("content_hash", pa.string()),
    ("phash", pa.string()), ("caption", pa.string()), ("url", pa.string()), ("kept", pa.bool_()),
    ("reason", pa.string())])


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


@stage("dedup", reads=("dedup", "eval.datasets"), files=("dedup.eval_sets", "eval.datasets"), inputs=("shards",),
       when={"eval.datasets": "dedup.include_eval_datasets"})
def dedup(cfg: PipelineConfig, ws: Workspace, shards: StageResult) -> StageResult:
    """Deduplicate and decontaminate a download result against the evaluation sets."""
    downloaded, dd = shards, cfg.dedup
    paths = eval_set_paths(cfg)
    fs, folder = fs_of(downloaded.files["shards"])
    tars = [p if is_local_fs(fs) else fs.unstrip_protocol(p) for p in sorted(fs.glob(f"{folder}/*.tar"))]
    fp = fingerprint_shards(tars, dd.phash_size, dd.signature_size, dd.workers)
    if len(fp) == 0:
        raise ValueError(f"no image in the shards under {downloaded.files['shards']}")
    h = fp.hashes
    ok = np.array([not e for e in h.error], bool)
    rows = np.flatnonzero(ok)
    eval_ph, eval_sig, eval_names = _eval_fingerprints(paths, cfg)
    decisions = deduplicate([fp.sample_id[i] for i in rows], [h.content_hash[i] for i in rows], h.phash[rows],
                            h.signature[rows], (h.width * h.height)[rows], dd, eval_ph, eval_sig)
    kept, reason, dup_of = np.zeros(len(fp), bool), ["undecodable"] * len(fp), [""] * len(fp)
    for j, i in enumerate(rows):
        kept[i], reason[i] = decisions.kept[j], decisions.reason[j]
        if decisions.reason[j] == "contaminated":
            dup_of[i] = eval_names[decisions.duplicate_of[j]]
        elif decisions.duplicate_of[j] >= 0:
            dup_of[i] = fp.sample_id[rows[decisions.duplicate_of[j]]]
    subset = read_parquet(downloaded.files["subset"], columns=["sample_id", "url", "caption"]).to_pydict()
    meta = {s: (u, c) for s, u, c in zip(subset["sample_id"], subset["url"], subset["caption"])}
    manifest = pa.table({
        "sample_id": fp.sample_id, "shard": fp.shard, "key": fp.key, "content_hash": h.content_hash,
        "phash": [phash_hex(b) for b in h.phash], "caption": [meta.get(s, ("", ""))[1] for s in fp.sample_id],
        "url": [meta.get(s, ("", ""))[0] for s in fp.sample_id], "kept": kept, "reason": reason},
        schema=MANIFEST_SCHEMA).sort_by("sample_id")
    dropped = [i for i in range(len(fp)) if not kept[i]]
    duplicates = pa.table({"sample_id": [fp.sample_id[i] for i in dropped], "reason": [reason[i] for i in dropped],
                           "duplicate_of": [dup_of[i] for i in dropped]})
    with ws.writing() as tmp:
        write_parquet(manifest, ws.fs, f"{tmp}/manifest.parquet")
        write_parquet(duplicates, ws.fs, f"{tmp}/duplicates.parquet")
    stats = {**downloaded.stats, **decisions.counts(), "kept": int(kept.sum()), "undecodable": int((~ok).sum()),
             "images": len(fp), "eval_images": len(eval_names)}
    kept_rows = ((fp.sample_id[i], h.content_hash[i]) for i in range(len(fp)) if kept[i])
    return ws.result(dataset_digest(kept_rows), {
        **{k: v for k, v in downloaded.files.items() if k in ("subset", "shards", "download_stats", "samples")},
        "manifest": "manifest.parquet", "duplicates": "duplicates.parquet"}, stats)

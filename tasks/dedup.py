"""Stage 3 (dedup): webdataset shards -> manifest of kept / dropped samples and the dataset digest.

Exact duplicates (content hash of decoded pixels), decontamination against the evaluation sets
(``dedup.eval_sets`` and, with ``dedup.include_eval_datasets``, every path of ``eval.datasets``) and near duplicates
(ANN search over perceptual signatures): ``franca_core/dedup/near_dup.py``. Output ``<root>/dedup/<input-digest>/``:

- ``manifest.parquet``: one row per downloaded image, columns ``MANIFEST_SCHEMA`` (read by the pretraining stage:
  ``shard`` is the tar's full URI, ``key`` the webdataset key inside it);
- ``duplicates.parquet``: for each dropped row, what it duplicates (a sample id, or ``<eval set>#<key>``).

The result's digest is the dataset digest: sha256 of the sorted (sample_id, content_hash) of kept rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from franca_core.config import PipelineConfig
from franca_core.data.image_sets import image_set_digest, iter_image_set
from franca_core.dedup.digest import dataset_digest
from franca_core.dedup.fingerprint import fingerprint_shards
from franca_core.dedup.hashing import hash_images, phash_hex
from franca_core.dedup.near_dup import deduplicate
from tasks.data_io import fs_of, open_store, read_parquet, write_parquet
from tasks.storage import StageResult, input_digest, is_local

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


def dedup(cfg: PipelineConfig, downloaded: StageResult) -> StageResult:
    """Deduplicate and decontaminate a download result; a no-op when already done for these inputs."""
    store, dd = open_store(cfg), cfg.dedup
    paths = eval_set_paths(cfg)
    try:
        eval_digests = {p: image_set_digest(p) for p in paths}
    except FileNotFoundError as exc:
        raise ValueError(f"evaluation set for decontamination not found ({exc}); check dedup.eval_sets and "
                         f"eval.datasets") from exc
    digest = input_digest(dd, {"download": downloaded.digest, "eval_sets": eval_digests})
    if (done := store.load("dedup", digest)) is not None:
        return done
    fs, shards = fs_of(downloaded.files["shards"])
    tars = [p if is_local(fs) else fs.unstrip_protocol(p) for p in sorted(fs.glob(f"{shards}/*.tar"))]
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
    with store.writing("dedup", digest) as tmp:
        write_parquet(manifest, store.fs, f"{tmp}/manifest.parquet")
        write_parquet(duplicates, store.fs, f"{tmp}/duplicates.parquet")
    final = store.path("dedup", digest)
    stats = {**downloaded.stats, **decisions.counts(), "kept": int(kept.sum()), "undecodable": int((~ok).sum()),
             "images": len(fp), "eval_images": len(eval_names)}
    return store.publish(StageResult(
        stage="dedup", uri=store.uri(final), input_digest=digest,
        digest=dataset_digest((fp.sample_id[i], h.content_hash[i]) for i in range(len(fp)) if kept[i]), stats=stats,
        files={**{k: v for k, v in downloaded.files.items() if k in ("subset", "shards", "download_stats", "samples")},
               "manifest": store.uri(f"{final}/manifest.parquet"),
               "duplicates": store.uri(f"{final}/duplicates.parquet")}))

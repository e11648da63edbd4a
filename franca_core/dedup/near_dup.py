"""Keep / drop decisions: exact duplicates, decontamination, near duplicates.

Order of the passes (each runs on what the previous kept):
1. exact duplicates: equal ``content_hash`` (decoded pixels);
2. contamination: a training image whose nearest evaluation images include a near duplicate (the same rule as
   3.) is dropped, so no resized / re-encoded copy of a test image reaches pretraining;
3. near duplicates: pairs found by the ANN search (``ann.neighbour_pairs``) that pass ``is_near``.

Within a group of duplicates the image with the most pixels is kept (the least degraded copy), ties broken by
``sample_id``; decisions are greedy in that priority order, so they do not depend on shard order and a pair
chain ``a ~ b ~ c`` with ``a`` kept keeps ``c`` unless ``c ~ a``. This is the usual "keep one per duplicate
set" policy of LAION-scale dedup (e.g. SemDeDup, arXiv:2303.09540, keeps one per cluster).

Thresholds (defaults of ``DedupConfig``: signature L2 <= 0.09 and phash Hamming <= 14 of 64 bits), measured after
img2dataset's resize to 64 px: planted near duplicates of the synthetic corpus reach 0.075 / 12 (crops are the
hardest), copies of Tiny-ImageNet images 0.033 / 4; the closest distinct synthetic images come to 0.065 but then
differ by >= 22 phash bits, and among 3,000 x 3,000 Tiny-ImageNet train / val pairs none passes both tests
(4 distinct pairs pass at 0.10 / 16). Neither signal alone separates the classes; both together do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from franca_core.config import DedupConfig
from franca_core.dedup.ann import SignatureIndex, neighbour_pairs
from franca_core.dedup.hashing import hamming

EXACT, NEAR, CONTAMINATED = "exact_duplicate", "near_duplicate", "contaminated"


@dataclass
class Decisions:
    """Per-sample outcome: ``kept``, ``reason`` ('' when kept) and ``duplicate_of`` (row index, eval index or -1)."""

    kept: np.ndarray  # (n,) bool
    reason: list[str]
    duplicate_of: np.ndarray  # (n,) int64: the kept training row (duplicates) or the evaluation row (contaminated)

    def counts(self) -> dict[str, int]:
        """Number of samples per outcome: kept, exact_duplicate, near_duplicate, contaminated."""
        out = {"kept": int(self.kept.sum()), EXACT: 0, NEAR: 0, CONTAMINATED: 0}
        for reason in self.reason:
            if reason:
                out[reason] = out.get(reason, 0) + 1
        return out


def is_near(distance: np.ndarray, phash_a: np.ndarray, phash_b: np.ndarray, cfg: DedupConfig) -> np.ndarray:
    """The near-duplicate rule: signature distance and phash Hamming distance both within their thresholds."""
    return (distance <= cfg.near_dup_max_distance) & (hamming(phash_a, phash_b) <= cfg.near_dup_max_hamming)


def priority(sample_ids: Sequence[str], areas: np.ndarray) -> np.ndarray:
    """Rank of each row (0 = kept first): most pixels first, then ``sample_id``."""
    order = sorted(range(len(sample_ids)), key=lambda i: (-int(areas[i]), sample_ids[i]))
    rank = np.empty(len(order), np.int64)
    rank[np.asarray(order, np.int64)] = np.arange(len(order))
    return rank


def deduplicate(sample_ids: Sequence[str], content_hashes: Sequence[str], phashes: np.ndarray,
                signatures: np.ndarray, areas: np.ndarray, cfg: DedupConfig,
                eval_phashes: np.ndarray | None = None, eval_signatures: np.ndarray | None = None) -> Decisions:
    """Decide which of ``n`` samples to keep.

    Args:
        sample_ids: stable ids (unique), ``n``.
        content_hashes: ``hashing.content_hash`` per sample.
        phashes: packed phash bits ``(n, bytes)``.
        signatures: ``(n, d)`` float32 signatures.
        areas: pixel counts ``(n,)`` (the larger copy of a duplicate pair is kept).
        cfg: the dedup config section.
        eval_phashes, eval_signatures: fingerprints of the evaluation images (``(m, bytes)``, ``(m, d)``) or None.
    """
    n = len(sample_ids)
    if len(set(sample_ids)) != n:
        raise ValueError("sample_ids are not unique; every downloaded sample needs its own id")
    rank = priority(sample_ids, np.asarray(areas))
    kept, reason, dup_of = np.ones(n, bool), [""] * n, np.full(n, -1, np.int64)

    first: dict[str, int] = {}
    for i in np.argsort(rank):
        j = first.setdefault(content_hashes[i], int(i))
        if j != i:
            kept[i], reason[i], dup_of[i] = False, EXACT, j

    if eval_signatures is not None and len(eval_signatures) and kept.any():
        if eval_phashes is None:
            raise ValueError("deduplicate: eval_signatures were given without eval_phashes; pass both or neither")
        rows = np.flatnonzero(kept)
        dist, ids = SignatureIndex(eval_signatures, cfg.ann_nprobe).search(signatures[rows], cfg.ann_neighbours)
        valid = ids >= 0
        near = valid & is_near(dist, phashes[rows][:, None, :], eval_phashes[np.where(valid, ids, 0)], cfg)
        hit = near.any(axis=1)
        for r, row_hits, row_ids in zip(rows[hit], near[hit], ids[hit]):
            kept[r], reason[r], dup_of[r] = False, CONTAMINATED, int(row_ids[row_hits.argmax()])

    rows = np.flatnonzero(kept)
    pairs = rows[neighbour_pairs(signatures[rows], cfg.ann_neighbours, cfg.near_dup_max_distance, cfg.ann_nprobe)]
    if len(pairs):
        dist = np.linalg.norm(signatures[pairs[:, 0]] - signatures[pairs[:, 1]], axis=1)
        pairs = pairs[is_near(dist, phashes[pairs[:, 0]], phashes[pairs[:, 1]], cfg)]
        # orient each pair (better, worse) by rank and visit them in the rank order of the worse one
        swap = rank[pairs[:, 0]] > rank[pairs[:, 1]]
        pairs[swap] = pairs[swap][:, ::-1]
        for better, worse in pairs[np.argsort(rank[pairs[:, 1]], kind="stable")]:
            if kept[better] and kept[worse]:
                kept[worse], reason[worse], dup_of[worse] = False, NEAR, better
    return Decisions(kept, reason, dup_of)

"""ANN search over signatures (franca_core/dedup/ann.py): recall against exact search, determinism."""

from __future__ import annotations

import numpy as np

from franca_core.dedup.ann import SignatureIndex, neighbour_pairs


def _clustered(n: int, planted: int, seed: int = 0) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """``n`` 48-d vectors in 50 clusters (spread like real signatures) plus ``planted`` close copies."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=0.3, size=(50, 48))
    base = centres[rng.integers(0, 50, n)] + rng.normal(scale=0.05, size=(n, 48))
    src = rng.choice(n, planted, replace=False)
    copies = base[src] + rng.normal(scale=0.004, size=(planted, 48))  # ~0.03 away: a near duplicate
    vectors = np.concatenate([base, copies]).astype(np.float32)
    return vectors, {(int(s), n + i) for i, s in enumerate(src)}


def test_neighbour_pairs__recall_of_planted_pairs_and_exact_distances() -> None:
    vectors, planted = _clustered(6000, 200)
    pairs = neighbour_pairs(vectors, k=8, max_distance=0.09, nprobe=8)
    found = {tuple(p) for p in pairs.tolist()}
    recall = len(planted & found) / len(planted)
    assert recall >= 0.99, f"ANN found {recall:.3f} of the planted pairs"
    dist = np.linalg.norm(vectors[pairs[:, 0]] - vectors[pairs[:, 1]], axis=1)
    assert (dist <= 0.09 + 1e-5).all() and (pairs[:, 0] < pairs[:, 1]).all()


def test_neighbour_pairs__deterministic() -> None:
    vectors, _ = _clustered(3000, 50, seed=1)
    a = neighbour_pairs(vectors, k=8, max_distance=0.09)
    b = neighbour_pairs(vectors.copy(), k=8, max_distance=0.09)
    np.testing.assert_array_equal(a, b)


def test_signature_index__inverted_file_scales_cells_with_n() -> None:
    small, large = SignatureIndex(np.zeros((20, 4), np.float32)), SignatureIndex(_clustered(10_000, 0)[0])
    assert small.nlist == 1  # too few vectors to train k-means: exact flat index
    assert large.nlist == 100  # sqrt(n) cells: each query scans nprobe * n / nlist vectors, not n
    dist, ids = large.search(_clustered(10_000, 0)[0][:5], 1)
    assert (ids[:, 0] == np.arange(5)).all() and np.allclose(dist[:, 0], 0, atol=1e-3)

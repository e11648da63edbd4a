"""Approximate nearest neighbours over signatures with faiss (Johnson et al., arXiv:1702.08734).

``SignatureIndex`` is an inverted file over exact L2 distances (faiss ``IndexIVFFlat``): k-means cells, and a query
scans only its ``nprobe`` nearest cells, so ``n`` queries cost about ``n * (nlist + nprobe * n / nlist)`` distance
evaluations with ``nlist ~ sqrt(n)``, never the ``n**2`` of all pairs. Tiny inputs (< ``MIN_TRAIN`` vectors) use an
exact flat index, which is cheaper there.

Everything runs on one faiss thread (``faiss_threads(1)``): k-means and BLAS reductions on several threads round
differently, which could move a vector to another cell and, rarely, change a near-duplicate decision and so the
dataset digest. Reproducibility is worth more than the second core here (hashing, not search, dominates).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import faiss
import numpy as np

MIN_TRAIN = 39  # faiss wants >= 39 training points per cell


@contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` OpenMP threads in faiss, restoring the previous setting afterwards."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


class SignatureIndex:
    """L2 index over ``(n, d)`` float32 vectors; ``search`` returns distances (not squared) and row ids.

    Args:
        vectors: the database, ``(n, d)``.
        nprobe: cells scanned per query (recall vs time).
        seed: k-means seed (fixed: the same vectors give the same index).
    """

    def __init__(self, vectors: np.ndarray, nprobe: int = 8, seed: int = 1234) -> None:
        data = np.ascontiguousarray(vectors, dtype=np.float32)
        if data.ndim != 2 or len(data) == 0:
            raise ValueError(f"SignatureIndex needs a non-empty (n, d) array, got shape {data.shape}")
        n, dim = data.shape
        self.nlist = int(max(1, min(np.sqrt(n), n // MIN_TRAIN)))
        with faiss_threads(1):
            if self.nlist == 1:
                self.index: faiss.Index = faiss.IndexFlatL2(dim)
            else:
                ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, self.nlist)
                ivf.cp.seed, ivf.cp.niter = seed, 10
                ivf.cp.max_points_per_centroid = 64  # bounded training sample: k-means stays ~linear in n
                ivf.train(data)
                ivf.nprobe = min(nprobe, self.nlist)
                self.index = ivf
            self.index.add(data)
        self.size = n

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, ids)``, both ``(m, k')`` with ``k' = min(k, n)``; missing neighbours have id -1."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        with faiss_threads(1):
            d2, ids = self.index.search(q, min(k, self.size))
        return np.sqrt(np.maximum(d2, 0.0)), ids


def neighbour_pairs(vectors: np.ndarray, k: int, max_distance: float, nprobe: int = 8) -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j``, among each vector's ``k`` approximate nearest neighbours within ``max_distance``.

    Returns an ``(m, 2)`` int64 array, unique rows, sorted.
    """
    if len(vectors) < 2:
        return np.zeros((0, 2), np.int64)
    dist, ids = SignatureIndex(vectors, nprobe).search(vectors, k + 1)  # +1: a vector finds itself
    rows = np.repeat(np.arange(len(vectors)), ids.shape[1])
    cols, d = ids.ravel(), dist.ravel()
    ok = (cols >= 0) & (cols != rows) & (d <= max_distance)
    pairs = np.sort(np.stack([rows[ok], cols[ok]], axis=1), axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else np.zeros((0, 2), np.int64)

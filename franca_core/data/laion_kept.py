"""The rows select can still choose, in memory bounded by the output: top rows by key, then URL dedup.

Rows come in as chunks of candidates (rows that passed the filters) with their keys ``(rank, row index)``. Only the
``target + slack`` rows of smallest key are kept between chunks (``KeptRows.merge``): a prefix ``T`` of all
candidates by key. At the end a URL listed more than once keeps only its row of smallest key, and the first
``target`` rows left are the subset. Deduplicating ``T`` alone is exact: ``T`` holds every row of smaller key than
its members, so when it still has ``target`` distinct URLs they are the first ``target`` of all rows. When it does
not (more than ``slack`` repeats among the first rows), ``result`` raises ``SlackExceeded`` and the caller runs
again with more slack. Without a target every candidate is kept.

Repeats are found by a 64-bit hash of the URL (``laion_rank.hash_strings``), then confirmed on the URL strings of
the rows with equal hashes only (a hash collision between two URLs keeps both). ``duplicates`` counts the repeats
that ranked before the last row chosen: the same whatever the chunking (``T`` holds all of them).

Dropped rows are only marked; a chunk's table is copied down to its live rows once they are under a third of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from franca_core.data.laion_rank import hash_strings, to_numpy

MIN_SLACK = 1 << 16  # the least slack (rows kept beyond the target for repeated URLs)
HASH_ROWS = 1 << 18  # URLs hashed at a time (bounded temporaries)


class SlackExceeded(RuntimeError):
    """More repeated URLs among the first rows than the slack kept for them: run again with more slack."""


@dataclass
class _Chunk:
    """Candidate rows of one chunk and their keys; ``alive``: not dropped."""

    table: pa.Table
    rank: np.ndarray
    row: np.ndarray
    alive: np.ndarray

    def filtered(self) -> _Chunk:
        return _Chunk(self.table.filter(pa.array(self.alive)), self.rank[self.alive], self.row[self.alive],
                      np.ones(int(self.alive.sum()), bool))


class KeptRows:
    """Candidates of select: the first ``target + slack`` by key between chunks (see the module docstring)."""

    def __init__(self, target: int | None, slack: int | None = None) -> None:
        self.target = target
        self.keep = None if target is None else target + (slack if slack is not None else
                                                          max(MIN_SLACK, target // 20))
        self.chunks: list[_Chunk] = []
        self.pending = 0  # rows added since the last merge
        self.threshold: int | None = None  # rank a new row must stay under (set once ``keep`` rows are kept)
        self.truncated = False  # some candidate was dropped for its rank

    def add(self, table: pa.Table, rank: np.ndarray, row: np.ndarray) -> None:
        """Take candidate rows (``table``) with their keys; merges once ``keep`` rows have gathered."""
        if table.num_rows:
            self.chunks.append(_Chunk(table, rank, row, np.ones(table.num_rows, bool)))
            self.pending += table.num_rows
        if self.keep is not None and self.pending >= self.keep:
            self.merge()

    def _alive(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """rank, row, chunk number and index in the chunk of every live row (rows in increasing order)."""
        index = [np.flatnonzero(c.alive) for c in self.chunks]
        empty = np.zeros(0, np.int64)
        return (np.concatenate([c.rank[i] for c, i in zip(self.chunks, index)] or [empty.astype(np.uint64)]),
                np.concatenate([c.row[i] for c, i in zip(self.chunks, index)] or [empty]),
                np.concatenate([np.full(len(i), n) for n, i in enumerate(index)] or [empty]),
                np.concatenate(index or [empty]))

    def _compact(self) -> None:
        """Copy a chunk mostly dropped down to its live rows: memory stays within 3x the live rows."""
        self.chunks = [c.filtered() if 3 * c.alive.sum() < len(c.alive) else c for c in self.chunks if c.alive.any()]
        pa.default_memory_pool().release_unused()  # hand the freed chunks back to the system now

    def _cut(self, count: int) -> bool:
        """Keep alive only the ``count`` live rows of smallest ``(rank, row)``; False when there are not more."""
        ranks = np.concatenate([c.rank[c.alive] for c in self.chunks] or [np.zeros(0, np.uint64)])
        if count >= len(ranks):
            return False
        kth = np.partition(ranks, count - 1)[count - 1]
        tied = np.sort(np.concatenate([c.row[c.alive & (c.rank == kth)] for c in self.chunks]))
        last = tied[count - int(np.count_nonzero(ranks < kth)) - 1]  # equal ranks: the earliest rows
        for c in self.chunks:
            c.alive &= (c.rank < kth) | ((c.rank == kth) & (c.row <= last))
        self.threshold = int(kth)
        return True

    def merge(self) -> None:
        """Drop every row after the first ``target + slack`` by key."""
        self.pending = 0
        if self.keep is not None and self._cut(self.keep):
            self.truncated = True
            self._compact()

    def _repeats(self, rank: np.ndarray, row: np.ndarray, chunk: np.ndarray, index: np.ndarray) -> np.ndarray:
        """Positions of the rows whose URL a row of smaller ``(rank, row)`` has."""
        hashes = np.zeros(len(rank), np.uint64)
        for n, c in enumerate(self.chunks):
            at = np.flatnonzero(chunk == n)
            for start in range(0, len(at), HASH_ROWS):
                some = at[start:start + HASH_ROWS]
                hashes[some] = hash_strings(c.table.column("url").take(pa.array(index[some])), 0)
        ordered = np.sort(hashes)
        repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
        if not len(repeated):
            return np.zeros(0, np.int64)
        pos = np.flatnonzero(to_numpy(pc.is_in(pa.array(hashes), value_set=pa.array(repeated))))
        urls = pa.chunked_array([self.chunks[n].table.column("url").take(pa.array(index[pos[chunk[pos] == n]]))
                                 for n in np.unique(chunk[pos])], pa.string())
        pos = np.concatenate([pos[chunk[pos] == n] for n in np.unique(chunk[pos])])  # in the order of ``urls``
        group = pa.table({"url": urls, "rank": rank[pos], "row": row[pos], "pos": pos})
        group = group.sort_by([("url", "ascending"), ("rank", "ascending"), ("row", "ascending")])
        col = group.column("url")
        repeat = to_numpy(pc.equal(col.slice(1), col.slice(0, len(col) - 1)))
        return to_numpy(group.column("pos"))[1:][repeat]

    def result(self) -> tuple[pa.Table, int]:
        """The chosen rows in row order, and how many repeats were dropped that ranked before the last of them.

        Raises:
            SlackExceeded: too many repeats among the rows kept to know the first ``target`` distinct URLs.
        """
        self.merge()
        rank, row, chunk, index = self._alive()
        dups = self._repeats(rank, row, chunk, index)
        for n in np.unique(chunk[dups]):
            self.chunks[n].alive[index[dups][chunk[dups] == n]] = False
        if self.target is not None and self.truncated and len(rank) - len(dups) < self.target:
            raise SlackExceeded(f"{len(dups)} repeated URLs among the first {len(rank)} rows, more than the slack of "
                                f"{len(rank) - self.target}")
        cut = self.target is not None and self._cut(self.target)
        full = cut or len(rank) - len(dups) == self.target  # as many rows as the target: count repeats before the last
        tables = [c.table.filter(pa.array(c.alive)) for c in self.chunks]  # chunks in row order, rows within them
        kept = pa.concat_tables(tables or [pa.table({"url": pa.array([], pa.string())})], promote_options="default")
        if not full:
            return kept, len(dups)
        top = max(c.rank[c.alive].max() for c in self.chunks if c.alive.any())  # the last row chosen: (top, last)
        last = max(c.row[c.alive & (c.rank == top)].max(initial=-1) for c in self.chunks)
        before = (rank[dups] < top) | ((rank[dups] == top) & (row[dups] < last))
        return kept, int(np.count_nonzero(before))

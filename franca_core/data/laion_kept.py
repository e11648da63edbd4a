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

    def _drop(self, chunk: np.ndarray, index: np.ndarray) -> None:
        for n in np.unique(chunk):
            self.chunks[n].alive[index[chunk == n]] = False
        # a chunk mostly dropped is copied down to its live rows: memory stays within 3x the live rows
        self.chunks = [c.filtered() if 3 * c.alive.sum() < len(c.alive) else c for c in self.chunks if c.alive.any()]
        pa.default_memory_pool().release_unused()  # hand the freed chunks back to the system now

    def _first(self, rank: np.ndarray, row: np.ndarray, count: int) -> np.ndarray:
        """Boolean mask of the ``count`` entries of smallest ``(rank, row)``; sets ``threshold`` to their last rank."""
        first = np.ones(len(rank), bool)
        if count < len(rank):
            kth = np.partition(rank, count - 1)[count - 1]
            tied = np.flatnonzero(rank == kth)
            first = rank < kth
            first[tied[np.argsort(row[tied], kind="stable")][: count - int(first.sum())]] = True
            self.threshold = int(kth)
        return first

    def merge(self) -> None:
        """Drop every row after the first ``target + slack`` by key."""
        self.pending = 0
        rank, row, chunk, index = self._alive()
        if self.keep is None or len(rank) <= self.keep:
            return
        out = ~self._first(rank, row, self.keep)
        self.truncated = True
        self._drop(chunk[out], index[out])

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
        live = np.ones(len(rank), bool)
        live[dups] = False
        if self.target is not None and self.truncated and np.count_nonzero(live) < self.target:
            raise SlackExceeded(f"{len(dups)} repeated URLs among the first {len(rank)} rows, more than the slack of "
                                f"{len(rank) - self.target}")
        if self.target is not None:
            live[live] = self._first(rank[live], row[live], self.target)
        dup_rank, dup_row = rank[dups], row[dups]
        tables = [c.table for c in self.chunks] or [pa.table({"url": pa.array([], pa.string())})]
        starts = np.zeros(len(self.chunks) + 1, np.int64)
        starts[1:] = np.cumsum([len(c.alive) for c in self.chunks])
        chosen = np.zeros(starts[-1], bool)
        chosen[starts[chunk[live]] + index[live]] = True  # chunks are in row order, and rows within them
        kept = pa.concat_tables(tables, promote_options="default").filter(pa.array(chosen))
        if self.target is None or np.count_nonzero(live) < self.target:
            return kept, len(dup_rank)
        top = rank[live].max()  # the key of the last row chosen: (top, last)
        last = row[live & (rank == top)].max()
        before = (dup_rank < top) | ((dup_rank == top) & (dup_row < last))
        return kept, int(np.count_nonzero(before))

"""LAION-style metadata selection, part by part: filters, URL dedup and hash-rank sampling (stage 1, select).

Metadata (LAION-5B, Schuhmann et al., arXiv:2210.08402; LAION-400M, arXiv:2111.02114; DataComp, arXiv:2304.14108)
is read as our columns (``laion_schemas.py``: which file column feeds which, and their types), in chunks of at most
one Parquet row group, with Arrow compute and numpy only (no Python loop over rows). ``Selector`` keeps, between
chunks, only the rows that can still be chosen, so memory is one chunk plus the output.

What is chosen, whatever the row order, the part boundaries and the chunk sizes:

1. **Filters** (``data.select``), in the order of ``FILTER_RULES``; a row is counted under the first it fails
   (``filtered_<rule>``). A rule whose column a file lacks is skipped for that file (a logged notice,
   ``skipped_filters[rule]`` rows), never by dropping rows. A null value ("unscored", e.g. LAION-400M has no
   ``punsafe``; a row the detector never scored) fails its rule unless ``drop_unscored`` is false, and is counted in
   ``unscored[rule]`` either way. ``nsfw``, ``license`` and ``language`` apply only when configured (not None).
2. **URL dedup**: a URL listed more than once is kept once, by the occurrence with the smallest rank (ties: the
   earliest row).
3. **Hash-rank sampling**: the ``target_count`` remaining rows of smallest ``(rank, row index)``, where rank is the
   seeded 64-bit hash of ``laion_rank.py`` of the ``sample_id`` column when the file has one, else of the URL (the
   sample id then being ``sha256(url)[:20]``, computed for the chosen rows only). Growing ``target_count`` only adds
   rows; without it every remaining row is chosen.

Between chunks only the rows that rank high enough to be chosen are kept (``laion_kept.py``), so repeated URLs are
looked for among them: ``filtered_duplicate_url`` counts the repeats that ranked before the last row chosen and
``not_sampled`` the other passing rows, counts that are also the same for any part boundaries. The subset lists the
chosen rows in the metadata's order (parts by name, rows as stored).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from franca_core.config import SelectConfig
from franca_core.data.laion_kept import KeptRows, SlackExceeded
from franca_core.data.laion_rank import hash_ints, hash_strings, to_numpy
from franca_core.data.laion_schemas import MetadataError, to_kept, to_output

__all__ = ["FILTER_RULES", "LAION_COLUMNS", "OUTPUT_COLUMNS", "MetadataError", "Selector", "SlackExceeded",
           "select_table"]

log = logging.getLogger("franca.select")

LAION_COLUMNS: tuple[str, ...] = ("sample_id", "url", "caption", "width", "height", "similarity", "punsafe",
                                  "pwatermark", "aesthetic", "language", "license")
OUTPUT_COLUMNS: tuple[str, ...] = LAION_COLUMNS + ("nsfw",)
FILTER_RULES: tuple[str, ...] = ("url", "min_size", "aspect", "similarity", "punsafe", "pwatermark", "nsfw",
                                 "license", "language")
RULE_COLUMNS: dict[str, tuple[str, ...]] = {
    "url": ("url",), "min_size": ("width", "height"), "aspect": ("width", "height"), "similarity": ("similarity",),
    "punsafe": ("punsafe",), "pwatermark": ("pwatermark",), "nsfw": ("nsfw",), "license": ("license",),
    "language": ("language",)}


def _numbers(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A numeric column as numpy (integers without nulls as they are, no copy) and its null (or NaN) mask."""
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        column = pc.cast(column, pa.float64())  # decimals, an all-null column
    values = to_numpy(column)  # nulls: NaN (integers with nulls become floats)
    return values, np.isnan(values) if values.dtype.kind == "f" else np.zeros(len(values), bool)


def _member(table: pa.Table, name: str, allowed: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(value in allowed, value is null)`` of a string column; a dictionary column is tested on its dictionary."""
    values = pa.array(allowed, pa.string())
    ok = []
    for chunk in table.column(name).chunks:
        if pa.types.is_dictionary(chunk.type):
            ok.append(pc.is_in(pc.cast(chunk.dictionary, pa.string()), value_set=values).take(chunk.indices))
        else:
            ok.append(pc.is_in(pc.cast(chunk, pa.string()), value_set=values))
    return to_numpy(pc.fill_null(pa.chunked_array(ok, pa.bool_()), False)), to_numpy(table.column(name).is_null())


def rule_masks(table: pa.Table, rule: str, cfg: SelectConfig,
               cache: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """``(passes, unscored)`` boolean masks of one rule on ``table`` (our column names; ``cache`` shares columns)."""
    def num(name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in cache:
            cache[name] = _numbers(table.column(name))
        return cache[name]

    if rule == "url":
        length = _numbers(pc.binary_length(table.column("url")))[0]
        return length > 0, np.zeros(table.num_rows, bool)  # no URL: nothing to download, never "unscored"
    if rule in ("nsfw", "license", "language"):
        allowed = {"nsfw": cfg.nsfw_tags, "license": cfg.licenses, "language": cfg.languages}[rule]
        return _member(table, rule, list(allowed or []))
    with np.errstate(divide="ignore", invalid="ignore"):  # NaN (null) fails every comparison
        if rule in ("min_size", "aspect"):
            (w, w_null), (h, h_null) = num("width"), num("height")
            ok = ((w >= cfg.min_width) & (h >= cfg.min_height) if rule == "min_size"
                  else (w >= cfg.min_aspect * h) & (w <= cfg.max_aspect * h))  # aspect w / h, without dividing
            return ok, w_null | h_null
        value, null = num(rule)
        ok = {"similarity": value >= cfg.min_similarity, "punsafe": value <= cfg.max_punsafe,
              "pwatermark": value <= cfg.max_pwatermark}[rule]
        return ok, null


class Selector:
    """Filters, dedups and samples metadata fed chunk by chunk (see the module docstring); ``finish`` gives the subset.

    Example:
        >>> sel = Selector(SelectConfig(target_count=1000))
        >>> for chunk, where, sources in chunks:  # doctest: +SKIP
        ...     sel.add(chunk, where, sources)
        >>> subset, stats = sel.finish()  # doctest: +SKIP
    """

    def __init__(self, cfg: SelectConfig, slack: int | None = None) -> None:
        self.cfg = cfg
        optional = {"nsfw": cfg.nsfw_tags, "license": cfg.licenses, "language": cfg.languages}
        self.rules = tuple(r for r in FILTER_RULES if r not in optional or optional[r] is not None)
        self.rows_in = 0
        self.filtered = dict.fromkeys(FILTER_RULES, 0)
        self.unscored: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.id_kind: str | None = None
        self.kept = KeptRows(cfg.target_count, slack)

    def add(self, table: pa.Table, where: str, sources: Mapping[str, str] | None = None) -> None:
        """Take one chunk: ``table`` in our column names, read from ``where`` (``sources``: ours -> the file's)."""
        if "url" not in table.column_names:
            raise MetadataError(f"metadata {where} lacks column(s) ['url']; it has {table.column_names}")
        n, first_row = table.num_rows, self.rows_in
        self.rows_in += n
        if n == 0:
            return
        keep, cache = np.ones(n, bool), dict[str, tuple[np.ndarray, np.ndarray]]()
        for rule in self.rules:
            if not all(c in table.column_names for c in RULE_COLUMNS[rule]):
                if rule not in self.skipped:  # nsfw quietly: most releases have no tag column (punsafe instead)
                    log.log(logging.INFO if rule == "nsfw" else logging.WARNING, "select: filter %r skipped for %s, "
                            "which has no %s column (rows are kept)", rule, where, "/".join(RULE_COLUMNS[rule]))
                self.skipped[rule] = self.skipped.get(rule, 0) + n
                continue
            ok, unscored = rule_masks(table, rule, self.cfg, cache)
            if unscored.any():
                self.unscored[rule] = self.unscored.get(rule, 0) + int(unscored.sum())
                if not self.cfg.drop_unscored:
                    ok = ok | unscored
            self.filtered[rule] += int(np.count_nonzero(keep & ~ok))
            keep &= ok
        rank = self._ranks(table, where, dict(sources or {}))
        if self.kept.threshold is not None:
            keep &= rank < np.uint64(self.kept.threshold)
        rows = np.flatnonzero(keep)
        chosen = to_kept(table.filter(pa.array(keep)), where, sources or {}) if len(rows) else table.slice(0, 0)
        self.kept.add(chosen, rank[rows], rows + first_row)

    def _ranks(self, table: pa.Table, where: str, sources: dict[str, str]) -> np.ndarray:
        has_id = "sample_id" in table.column_names
        col = table.column("sample_id" if has_id else "url")
        kind = ("int" if pa.types.is_integer(col.type) else "string") if has_id else "url"
        if self.id_kind is None:
            self.id_kind = kind
        if kind != self.id_kind:
            raise MetadataError(f"metadata {where}: its sample ids are {kind} ({sources.get('sample_id', 'none')!r}) "
                                f"but those of the parts before are {self.id_kind}: all parts need the same id column")
        if has_id and col.null_count:
            raise MetadataError(f"metadata {where}: column {sources.get('sample_id', 'sample_id')!r} (sample_id) has "
                                f"{col.null_count} null values")
        return hash_ints(col, self.cfg.seed) if kind == "int" else hash_strings(col, self.cfg.seed)

    def finish(self) -> tuple[pa.Table, dict[str, object]]:
        """The subset (``OUTPUT_COLUMNS`` present, rows in the metadata's order) and its counts.

        Raises:
            MetadataError: chosen rows with one ``sample_id``.
        """
        kept, dup_count = self.kept.result()
        subset = self._output(kept)
        filtered = {**self.filtered, "duplicate_url": dup_count}
        passing = self.rows_in - sum(self.filtered.values())
        stats: dict[str, object] = {
            "rows_in": self.rows_in, "filtered": sum(filtered.values()),
            **{f"filtered_{k}": v for k, v in filtered.items()},
            "unscored": dict(sorted(self.unscored.items())), "skipped_filters": dict(sorted(self.skipped.items())),
            "not_sampled": passing - dup_count - subset.num_rows, "selected": subset.num_rows}
        return subset, stats

    def _output(self, kept: pa.Table) -> pa.Table:
        """The chosen rows (``to_kept`` types) as the subset: output types, a sample id on every row, unique."""
        if "sample_id" not in kept.column_names:  # derived from the URL, for the chosen rows only
            ids = [hashlib.sha256(u.encode()).hexdigest()[:20] for u in kept.column("url").to_pylist()]
            kept = kept.append_column("sample_id", pa.array(ids, pa.string()))
        elif pc.count_distinct(kept.column("sample_id")).as_py() != kept.num_rows:
            counts = pc.value_counts(kept.column("sample_id")).to_pylist()
            twice = next(c["values"] for c in counts if c["counts"] > 1)
            raise MetadataError(f"metadata: sample_id values are not unique ({twice!r} is on more than one chosen row)")
        if "caption" not in kept.column_names:
            kept = kept.append_column("caption", pa.nulls(kept.num_rows, pa.string()))
        return to_output(kept.select([c for c in OUTPUT_COLUMNS if c in kept.column_names]))


def select_table(table: pa.Table, cfg: SelectConfig, where: str = "<table>",
                 slack: int | None = None) -> tuple[pa.Table, dict[str, object]]:
    """``Selector`` on one in-memory table in our column names (again with more slack if ``SlackExceeded``)."""
    while True:
        sel = Selector(cfg, slack)
        sel.add(table, where)
        try:
            return sel.finish()
        except SlackExceeded:
            slack = 4 * (sel.kept.keep or 0)

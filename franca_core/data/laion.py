"""LAION-style metadata: column layout, validation, filters and deterministic sampling (stage 1, select).

The layout follows the LAION-5B release (Schuhmann et al., arXiv:2210.08402; ``laion2B-en`` + aesthetics
parquet columns): ``url``, ``caption`` (LAION's ``TEXT``), ``width``, ``height``, ``similarity`` (CLIP image-text
cosine), ``punsafe``, ``pwatermark``, optional ``aesthetic``, ``language``, ``license`` and a ``sample_id``. Upper-case
LAION names (``URL``, ``TEXT``, ``WIDTH``, ``HEIGHT``, ``SAMPLE_ID``, ``LANGUAGE``) are accepted and renamed.

Sampling is by rank of ``sha256(f"{seed}:{sample_id}")``: the same rows are chosen whatever the row order of the
file, and growing ``target_count`` only adds rows.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from franca_core.config import SelectConfig

REQUIRED_COLUMNS: tuple[str, ...] = ("url", "caption", "width", "height", "similarity", "punsafe", "pwatermark")
LAION_COLUMNS: tuple[str, ...] = ("sample_id",) + REQUIRED_COLUMNS + ("aesthetic", "language", "license")
ALIASES: dict[str, str] = {"URL": "url", "TEXT": "caption", "WIDTH": "width", "HEIGHT": "height",
                           "SAMPLE_ID": "sample_id", "LANGUAGE": "language", "LICENSE": "license",
                           "AESTHETIC_SCORE": "aesthetic", "pwatermark_score": "pwatermark"}
FILTER_RULES: tuple[str, ...] = ("duplicate_url", "min_size", "aspect", "similarity", "punsafe", "pwatermark",
                                 "language")


class MetadataError(ValueError):
    """The metadata Parquet cannot be used as it is: the message names the file and the cause."""


def normalise(table: pa.Table, where: str) -> pa.Table:
    """Rename LAION aliases, check columns and rows, add ``sample_id`` (sha256 of the URL) when absent."""
    table = table.rename_columns([ALIASES.get(c, c) for c in table.column_names])
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise MetadataError(f"metadata {where} lacks column(s) {missing}; it has {table.column_names} "
                            f"(required: {list(REQUIRED_COLUMNS)})")
    if table.num_rows == 0:
        raise MetadataError(f"metadata {where} holds no rows")
    if "sample_id" not in table.column_names:
        ids: list[str] = []
        seen: dict[str, int] = {}  # a repeated URL gets "#k": unique ids, and the first one is the URL's own
        for url in table.column("url").to_pylist():
            base = hashlib.sha256(str(url).encode()).hexdigest()[:20]
            seen[base] = seen.get(base, -1) + 1
            ids.append(base if seen[base] == 0 else f"{base}#{seen[base]}")
        table = table.append_column("sample_id", pa.array(ids, pa.string()))
    table = table.set_column(table.column_names.index("sample_id"), "sample_id",
                             pc.cast(table.column("sample_id"), pa.string()))
    if pc.count_distinct(table.column("sample_id")).as_py() != table.num_rows:
        raise MetadataError(f"metadata {where}: sample_id values are not unique")
    return table


def _num(table: pa.Table, column: str) -> np.ndarray:
    """A numeric column as float64 with nulls as NaN (NaN fails every comparison, so nulls are filtered)."""
    return pc.cast(table.column(column), pa.float64()).to_numpy(zero_copy_only=False)


def filter_rows(table: pa.Table, cfg: SelectConfig) -> tuple[np.ndarray, dict[str, int]]:
    """Boolean mask of rows passing every filter, and counts of dropped rows by the first rule they fail."""
    width, height = _num(table, "width"), _num(table, "height")
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = width / height
    first_url, seen = np.zeros(table.num_rows, bool), set()
    for i, url in enumerate(table.column("url").to_pylist()):  # a URL listed twice is one resource: keep it once
        if url and url not in seen:
            first_url[i] = True
            seen.add(url)
    rules: dict[str, np.ndarray] = {
        "duplicate_url": first_url,
        "min_size": (width >= cfg.min_width) & (height >= cfg.min_height),
        "aspect": (aspect >= cfg.min_aspect) & (aspect <= cfg.max_aspect),
        "similarity": _num(table, "similarity") >= cfg.min_similarity,
        "punsafe": _num(table, "punsafe") <= cfg.max_punsafe,
        "pwatermark": _num(table, "pwatermark") <= cfg.max_pwatermark,
    }
    if cfg.languages is not None:
        if "language" not in table.column_names:
            raise MetadataError(f"select.languages={cfg.languages} needs a 'language' column; the metadata has none")
        rules["language"] = np.isin(np.asarray(table.column("language").to_pylist(), object), cfg.languages)
    keep = np.ones(table.num_rows, bool)
    counts = dict.fromkeys(FILTER_RULES, 0)
    for name, ok in rules.items():
        counts[name] = int((keep & ~ok).sum())
        keep &= ok
    return keep, counts


def sample_rows(table: pa.Table, target: int | None, seed: int) -> pa.Table:
    """Up to ``target`` rows chosen by hash rank (see module docstring), returned sorted by ``sample_id``."""
    ids = table.column("sample_id").to_pylist()
    if target is not None and target < len(ids):
        rank = sorted(range(len(ids)), key=lambda i: hashlib.sha256(f"{seed}:{ids[i]}".encode()).digest())
        table = table.take(pa.array(sorted(rank[:target]), pa.int64()))
    return table.sort_by("sample_id")

"""Metadata schemas of the LAION family and DataComp: which file column feeds each of our columns, and its type.

Our columns (``franca_core.config.MetadataColumn``) and the file columns looked for, first found wins; the
``data.columns`` mapping (our name -> the file's column) overrides the search for the names it gives:

====================  ===================================================================================
ours                  file columns, in order
====================  ===================================================================================
``sample_id``         ``sample_id``, ``SAMPLE_ID`` (LAION-400M, laion2B), ``uid`` (DataComp)
``url``               ``url``, ``URL``                                       (the only required column)
``caption``           ``caption`` (Re-LAION), ``TEXT`` (LAION), ``text`` (DataComp)
``width``/``height``  ``original_width``/``original_height`` (DataComp, Re-LAION), ``WIDTH``/``HEIGHT``,
                      ``width``/``height``
``similarity``        ``similarity``, ``clip_l14_similarity_score``, ``clip_b32_similarity_score`` (DataComp)
``punsafe``           ``punsafe``
``pwatermark``        ``pwatermark``, ``pwatermark_score``
``aesthetic``         ``aesthetic``, ``AESTHETIC_SCORE``, ``aesthetic_score``
``language``          ``language``, ``LANGUAGE`` (laion2B-multi)
``license``           ``license``, ``LICENSE`` (LAION-400M, laion2B)
``nsfw``              ``NSFW``, ``nsfw`` (LAION-400M, laion2B: ``UNLIKELY`` / ``UNSURE`` / ``NSFW``)
====================  ===================================================================================

The release layouts this relies on (looked up, not guessed; the files themselves were not downloaded here):

- LAION-400M (``laion400m-meta/part-*.snappy.parquet``, arXiv:2111.02114): ``SAMPLE_ID, URL, TEXT, HEIGHT, WIDTH,
  LICENSE, NSFW, similarity`` (TensorFlow Datasets' ``laion400m`` builder reads ``NSFW`` with the tags
  UNLIKELY / UNSURE / NSFW and ``LICENSE``; img2dataset's ``dataset_examples/laion400m.md`` keeps
  ``NSFW, similarity, LICENSE`` with ``--url_col URL --caption_col TEXT``).
- laion2B-en / laion2B-multi / laion1B-nolang (arXiv:2210.08402; 128 ``part-*.snappy.parquet`` each on Hugging
  Face): the LAION-400M layout as far as these sources show (img2dataset's ``laion5B.md`` reads them with
  ``--url_col URL --caption_col TEXT`` and keeps ``NSFW, similarity, LICENSE``; TensorFlow Datasets' ``laion2b``
  builder reads the same NSFW tags; ``LANGUAGE`` in -multi); the ``-joined`` releases add ``punsafe, pwatermark``
  (and ``hash``); the aesthetic subsets add ``aesthetic`` or ``AESTHETIC_SCORE`` (``laion-aesthetic.md`` keeps
  ``similarity, hash, punsafe, pwatermark, aesthetic``).
- Re-LAION research-safe (``laion/relaion2B-en-research-safe``, gated; public scripts that load it name every
  column): ``url, caption``, ``similarity, hash, punsafe, pwatermark`` and img2dataset's output columns (``key,
  status, error_message, width, height, original_width, original_height, exif, md5``): ``width``/``height`` there
  are after resizing, so the ``original_*`` ones come first.
- DataComp CommonPool / DataComp-1B (arXiv:2304.14108, mlfoundations/datacomp): ``uid, url, text,
  original_width, original_height, clip_b32_similarity_score, clip_l14_similarity_score, face_bboxes, sha256``.

Columns not listed (``hash``, ``exif``, ``face_bboxes``...) are accepted and not read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from franca_core.config import MetadataColumn

Kind = Literal["id", "string", "number"]


class MetadataError(ValueError):
    """The metadata cannot be used as it is: the message names the file, the column and the cause."""


@dataclass(frozen=True)
class Column:
    """One of our metadata columns: its kind and the file columns it is read from, in order of preference."""

    name: str
    kind: Kind
    candidates: tuple[str, ...]


COLUMNS: tuple[Column, ...] = (
    Column("sample_id", "id", ("sample_id", "SAMPLE_ID", "uid")),
    Column("url", "string", ("url", "URL")),
    Column("caption", "string", ("caption", "TEXT", "text")),
    Column("width", "number", ("original_width", "WIDTH", "width")),
    Column("height", "number", ("original_height", "HEIGHT", "height")),
    Column("similarity", "number", ("similarity", "clip_l14_similarity_score", "clip_b32_similarity_score")),
    Column("punsafe", "number", ("punsafe",)),
    Column("pwatermark", "number", ("pwatermark", "pwatermark_score")),
    Column("aesthetic", "number", ("aesthetic", "AESTHETIC_SCORE", "aesthetic_score")),
    Column("language", "string", ("language", "LANGUAGE")),
    Column("license", "string", ("license", "LICENSE")),
    Column("nsfw", "string", ("NSFW", "nsfw")),
)
BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
assert set(BY_NAME) == set(get_args(MetadataColumn)), "COLUMNS and config.MetadataColumn name the same columns"

# What each column becomes in the subset (one schema whatever the file's types, so parts concatenate).
OUTPUT_TYPES: dict[str, pa.DataType] = {
    "sample_id": pa.string(), "url": pa.string(), "caption": pa.string(), "width": pa.int64(), "height": pa.int64(),
    "similarity": pa.float64(), "punsafe": pa.float64(), "pwatermark": pa.float64(), "aesthetic": pa.float64(),
    "language": pa.string(), "license": pa.string(), "nsfw": pa.string()}
_EXPECTED = {"id": "an integer or a string", "string": "a string", "number": "a number"}


def _type_ok(kind: Kind, t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_null(t):
        return True
    strings = pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
    if kind == "string":
        return strings
    if kind == "id":
        return strings or pa.types.is_integer(t)
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def find_column(names: list[str], ours: str, mapping: Mapping[str, str]) -> str | None:
    """The file column that feeds ``ours`` among ``names`` (the mapping first), or None."""
    if ours in mapping:
        return mapping[ours] if mapping[ours] in names else None
    return next((c for c in BY_NAME[ours].candidates if c in names), None)


def resolve(schema: pa.Schema, mapping: Mapping[str, str], where: str) -> dict[str, str]:
    """Our column name -> the file column feeding it, for the columns this file has; types checked.

    Raises:
        MetadataError: no URL column, a mapped column the file lacks, or a column of the wrong type (the message
            names ``where``, the file's column and ours).
    """
    names = list(schema.names)
    found: dict[str, str] = {}
    for col in COLUMNS:
        source = find_column(names, col.name, mapping)
        if source is None and col.name in mapping:
            raise MetadataError(f"metadata {where}: data.columns maps {col.name!r} to {mapping[col.name]!r}, which "
                                f"it lacks (it has {names})")
        if source is None:
            continue
        field = schema.field(source)
        if not _type_ok(col.kind, field.type):
            raise MetadataError(f"metadata {where}: column {source!r} (read as {col.name!r}) is {field.type}, "
                                f"expected {_EXPECTED[col.kind]}")
        found[col.name] = source
    if "url" not in found:
        raise MetadataError(f"metadata {where} lacks column(s) ['url'] (looked for {list(BY_NAME['url'].candidates)} "
                            f"or data.columns.url); it has {names}")
    return found


CATEGORIES = ("language", "license", "nsfw")  # few distinct values: read dictionary-encoded, decoded at the end
_KEPT_TYPES: dict[str, pa.DataType] = {**OUTPUT_TYPES,
                                       **{c: pa.dictionary(pa.int32(), pa.string()) for c in CATEGORIES}}


def _cast(table: pa.Table, name: str, target: pa.DataType, where: str, sources: Mapping[str, str]) -> pa.Table:
    col = table.column(name)
    if col.type == target:
        return table
    if pa.types.is_floating(col.type) and pa.types.is_integer(target):
        col = pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)  # NaN: no value, not a number
    try:
        col = pc.cast(col, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise MetadataError(f"metadata {where}: column {sources.get(name, name)!r} (read as {name!r}) does not "
                            f"convert to {target}: {exc}") from exc
    return table.set_column(table.column_names.index(name), name, col)


def to_kept(table: pa.Table, where: str, sources: Mapping[str, str]) -> pa.Table:
    """Candidate rows in one schema whatever the part's types (so parts concatenate): ``OUTPUT_TYPES``, except
    ``CATEGORIES`` (dictionary-encoded) and an integer ``sample_id`` (int64), which ``to_output`` decodes.

    Raises:
        MetadataError: a value that does not convert (a fractional width, say), naming the file and column.
    """
    for name in table.column_names:
        target = _KEPT_TYPES.get(name)
        if name == "sample_id" and pa.types.is_integer(table.schema.field(name).type):
            target = pa.int64()
        if target is not None:
            table = _cast(table, name, target, where, sources)
    return table


def to_output(table: pa.Table, where: str = "the chosen rows") -> pa.Table:
    """Kept rows (``to_kept``) with the subset's column types (``OUTPUT_TYPES``)."""
    for name in table.column_names:
        if name in OUTPUT_TYPES:
            table = _cast(table, name, OUTPUT_TYPES[name], where, {})
    return table


def read_chunks(file: Any, mapping: Mapping[str, str], where: str,
                batch_rows: int = 1 << 17) -> Iterator[tuple[pa.Table, dict[str, str]]]:
    """The columns we use of one Parquet part (a path or binary file object), in our names, ``batch_rows`` rows at a
    time (within a row group), with their sources (ours -> the file's).

    Raises:
        MetadataError: as ``resolve``, or a part that is not Parquet or does not decode (named).
    """
    try:
        sources = resolve(pq.ParquetFile(file).schema_arrow, mapping, where)
        categories = [sources[c] for c in CATEGORIES if c in sources]
        # one decoding thread: Arrow's pool cost ~10 % more CPU per row here (the bench counts rows per CPU second)
        batches = pq.ParquetFile(file, read_dictionary=categories).iter_batches(
            batch_size=batch_rows, columns=list(dict.fromkeys(sources.values())), use_threads=False)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            yield pa.table({ours: batch.column(source) for ours, source in sources.items()}), sources
    except (pa.ArrowInvalid, OSError) as exc:
        raise MetadataError(f"metadata {where} is not a readable Parquet file: {exc}") from exc

"""Stable, vectorised 64-bit hashes of metadata columns: the sampling rank and the URL key of stage 1 (select).

For ``seed`` (``data.select.seed``), ``key = fmix64((seed + 0x632BE59BD9B4E019) mod 2**64)`` and:

- an integer id ``i`` (LAION's ``SAMPLE_ID``): ``rank = fmix64(uint64(i) ^ key)``;
- a string ``s`` (DataComp's ``uid``, our ``sample_id``, a URL): with ``h = fmix64(key ^ len(s))`` and, for each
  8-byte little-endian word ``w`` of its UTF-8 bytes (the last one zero-padded),
  ``h = h ^ w; h = h * 0x9E3779B97F4A7C15 mod 2**64; h = h ^ (h >> 29)``, the rank is ``fmix64(h)``.

``fmix64`` is SplitMix64's finaliser (Steele, Lea, Flood, "Fast splittable pseudorandom number generators",
OOPSLA 2014). Everything is explicit wrapping ``uint64`` arithmetic on little-endian words, so a rank is the same
on every machine and numpy version; it is a sampling key, not a cryptographic hash. Strings are hashed word by word
over the Arrow data buffer (one numpy pass per word position), never row by row in Python.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_MASK = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_ALL = np.uint64(_MASK)


def fmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, in place on a ``uint64`` array (returned)."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def seed_key(seed: int) -> np.uint64:
    """The per-seed key mixed into every rank."""
    return np.uint64(fmix64(np.array([(seed + 0x632BE59BD9B4E019) & _MASK], np.uint64))[0])


def to_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric or boolean Arrow array as numpy: numbers with nulls as float64 with NaN, booleans' nulls as False.

    Only zero-copy conversions after Arrow's own casts: a conversion that copies goes through pyarrow's pandas
    machinery, and its first use imports pandas (0.5 s and 50 MB in the select stage).
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.chunk(0) if values.num_chunks == 1 else pa.concat_arrays(values.chunks or
                                                                                 [pa.array([], values.type)])
    if pa.types.is_boolean(values.type):
        return np.asarray(pc.cast(pc.fill_null(values, False), pa.uint8()).to_numpy(zero_copy_only=True)).view(bool)
    if values.null_count:
        values = pc.fill_null(pc.cast(values, pa.float64()), float("nan"))
    return np.asarray(values.to_numpy(zero_copy_only=True))


def hash_ints(values: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """``(n,)`` uint64 ranks of an integer column without nulls."""
    ints = to_numpy(values)
    with np.errstate(over="ignore"):
        return fmix64(ints.astype(np.int64).view(np.uint64) ^ seed_key(seed))


def _plain(values: pa.Array) -> pa.Array:
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return values
    return pc.cast(values, pa.string())  # dictionary-encoded or view strings


def _hash_chunk(values: pa.Array, key: np.uint64) -> np.ndarray:
    values = _plain(values)
    n = len(values)
    width = 8 if pa.types.is_large_string(values.type) else 4
    _, offsets_buf, data_buf = values.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64 if width == 8 else np.int32, count=n + 1,
                            offset=values.offset * width).astype(np.int64)
    first, last = int(offsets[0]), int(offsets[-1])
    data = np.zeros(last - first + 8, np.uint8)  # 8 zero bytes after the last string: its last word reads in bounds
    if last > first:
        data[: last - first] = np.frombuffer(data_buf, np.uint8, count=last - first, offset=first)
    words = np.ndarray((len(data) - 7,), dtype="<u8", buffer=data, strides=(1,))  # the 8 bytes at each offset
    start, length = offsets[:-1] - first, np.diff(offsets)
    n_words = (length + 7) // 8
    with np.errstate(over="ignore"):
        h = fmix64(length.astype(np.uint64) ^ key)
        rows = np.arange(n)
        for j in range(int(n_words.max(initial=0))):
            rows = rows[n_words[rows] > j]  # the strings longer than j words
            every = len(rows) == n
            rest = (length if every else length[rows]) - 8 * j
            w = words[(start if every else start[rows]) + 8 * j]
            w &= _ALL >> (8 * (8 - np.minimum(rest, 8))).astype(np.uint64)  # the last word: its own bytes only
            x = h if every else h[rows]
            x ^= w
            x *= _GOLDEN
            x ^= x >> np.uint64(29)
            if not every:
                h[rows] = x
        return fmix64(h)


def hash_strings(values: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """``(n,)`` uint64 hashes of a string column (a null hashes as the empty string)."""
    key = seed_key(seed)
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    parts = [_hash_chunk(c, key) for c in chunks if len(c)]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint64)

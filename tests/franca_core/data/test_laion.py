"""LAION-family metadata: schemas, filters, URL dedup and hash-rank sampling (franca_core/data/laion*.py).

The tables use the real column names of each release (franca_core/data/laion_schemas.py says where they come from).
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from franca_core.config import SelectConfig
from franca_core.data.laion import Selector, SlackExceeded, select_table
from franca_core.data.laion_rank import hash_ints, hash_strings
from franca_core.data.laion_schemas import MetadataError, read_chunks

_MASK = (1 << 64) - 1


def _fmix(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _reference_hash(text: str, seed: int) -> int:
    """laion_rank's string hash written out row by row in plain Python (its module docstring, literally)."""
    key, data = _fmix((seed + 0x632BE59BD9B4E019) & _MASK), text.encode()
    h = _fmix(len(data) ^ key)
    for j in range(0, len(data), 8):
        h ^= int.from_bytes(data[j:j + 8].ljust(8, b"\0"), "little")
        h = (h * 0x9E3779B97F4A7C15) & _MASK
        h ^= h >> 29
    return _fmix(h)


def _parquet(table: pa.Table, **kwargs: Any) -> io.BytesIO:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kwargs)
    buf.seek(0)
    return buf


def select_file(table: pa.Table, cfg: SelectConfig | None = None, mapping: dict[str, str] | None = None,
                batch_rows: int = 1 << 17, slack: int | None = None) -> tuple[pa.Table, dict[str, Any]]:
    """``table`` written as Parquet, read back as our columns and selected (what the select stage does)."""
    sel = Selector(cfg or SelectConfig(), slack)
    for chunk, sources in read_chunks(_parquet(table), mapping or {}, "m.parquet", batch_rows):
        sel.add(chunk, "m.parquet", sources)
    return sel.finish()


def laion400m(n: int = 8, **override: list) -> pa.Table:
    """LAION-400M ``laion400m-meta`` layout: SAMPLE_ID, URL, TEXT, HEIGHT, WIDTH, LICENSE, NSFW, similarity."""
    cols: dict[str, Any] = {"SAMPLE_ID": list(range(10, 10 + n)), "URL": [f"http://x/{i}.jpg" for i in range(n)],
                            "TEXT": ["a cat"] * n, "HEIGHT": [64] * n, "WIDTH": [64] * n, "LICENSE": ["?"] * n,
                            "NSFW": ["UNLIKELY"] * n, "similarity": [0.35] * n}
    cols.update(override)
    return pa.table(cols)


def test_hash_strings__matches_the_documented_reference_on_every_layout() -> None:
    words = ["", "a", "abcdefgh", "abcdefghi", "é€ and 16 bytes!", "https://example.com/x.jpg" * 3]
    expected = [_reference_hash(w, 7) for w in words]
    arr = pa.array(words)
    assert [int(h) for h in hash_strings(arr, 7)] == expected
    assert [int(h) for h in hash_strings(arr.slice(2, 3), 7)] == expected[2:5]  # a slice: offsets not at 0
    chunked = pa.chunked_array([arr.slice(0, 2), arr.slice(2)]).cast(pa.large_string())
    assert [int(h) for h in hash_strings(chunked, 7)] == expected
    assert [int(h) for h in hash_strings(arr.dictionary_encode(), 7)] == expected
    assert int(hash_strings(pa.array(["a"]), 8)[0]) != expected[1]  # the seed matters
    assert int(hash_ints(pa.array([5]), 7)[0]) == _fmix(5 ^ _fmix((7 + 0x632BE59BD9B4E019) & _MASK))


def test_select__laion400m_schema_nsfw_tags_filter_and_missing_scores_skipped(caplog) -> None:
    table = laion400m(6, NSFW=["UNLIKELY", "UNSURE", "NSFW", "UNLIKELY", None, "UNLIKELY"])
    with caplog.at_level(logging.WARNING, logger="franca.select"):
        subset, stats = select_file(table)
    assert sorted(subset.column("sample_id").to_pylist()) == ["10", "13", "15"]
    assert stats["filtered_nsfw"] == 3 and stats["unscored"] == {"nsfw": 1}
    assert stats["skipped_filters"] == {"punsafe": 6, "pwatermark": 6}  # LAION-400M has no such columns
    assert "filter 'punsafe' skipped for m.parquet" in caplog.text
    assert subset.column("license").to_pylist() == ["?"] * 3 and subset.column("caption").to_pylist()[0] == "a cat"
    assert select_file(table, SelectConfig(nsfw_tags=None))[0].num_rows == 6  # the NSFW-tag filter switched off


def test_select__laion2b_en_joined_schema_filters_punsafe_and_keeps_aesthetic() -> None:
    """laion2B-en's own metadata has the LAION-400M layout (above); its -joined and -aesthetic releases these."""
    n = 5
    table = pa.table({"URL": [f"http://x/{i}" for i in range(n)], "TEXT": ["t"] * n, "WIDTH": [640.0] * n,
                      "HEIGHT": [480.0] * n, "similarity": [0.3] * n, "hash": list(range(n)),
                      "punsafe": [0.1, 0.9, 0.1, 0.1, 0.1], "pwatermark": [0.1, 0.1, 0.95, 0.1, 0.1],
                      "AESTHETIC_SCORE": [5.0, 6.0, 7.0, 8.0, 9.0]})
    subset, stats = select_file(table)
    assert sorted(subset.column("aesthetic").to_pylist()) == [5.0, 8.0, 9.0]
    assert stats["filtered_punsafe"] == 1 and stats["filtered_pwatermark"] == 1
    assert stats["skipped_filters"] == {"nsfw": 5}  # the -joined releases carry punsafe, not LAION-400M's tags
    assert subset.column("width").type == pa.int64() and "hash" not in subset.column_names
    assert all(len(i) == 20 for i in subset.column("sample_id").to_pylist())  # no id column: sha256(url)[:20]


def test_select__relaion_schema_sizes_are_the_original_ones() -> None:
    table = pa.table({"url": ["http://a/1", "http://a/2"], "caption": ["c", "d"], "key": ["0", "1"],
                      "status": ["success"] * 2, "error_message": [None, None], "width": [256, 256],
                      "height": [256, 256], "original_width": [20, 800], "original_height": [600, 600],
                      "exif": ["{}", "{}"], "md5": ["m", "n"], "similarity": [0.3, 0.3], "hash": [1, 2],
                      "punsafe": [0.0, 0.0], "pwatermark": [0.0, 0.0]})
    subset, stats = select_file(table)
    assert subset.column("url").to_pylist() == ["http://a/2"] and stats["filtered_min_size"] == 1
    assert subset.column("width").to_pylist() == [800]


def test_select__datacomp_schema_uid_text_and_clip_l14_score() -> None:
    uids = [f"{i:032x}" for i in range(4)]
    table = pa.table({"uid": uids, "url": [f"http://d/{i}" for i in range(4)], "text": ["x"] * 4,
                      "original_width": [300] * 4, "original_height": [200] * 4,
                      "clip_b32_similarity_score": [0.9] * 4, "clip_l14_similarity_score": [0.1, 0.3, 0.3, 0.3],
                      "face_bboxes": [[[0.0, 0.0, 1.0, 1.0]], [], [], []], "sha256": ["s"] * 4})
    subset, stats = select_file(table)
    assert sorted(subset.column("sample_id").to_pylist()) == uids[1:] and stats["filtered_similarity"] == 1
    assert subset.column("caption").to_pylist() == ["x"] * 3


def test_select__custom_schema_through_a_column_mapping() -> None:
    table = pa.table({"image_link": ["http://c/1", "http://c/2"], "alt": ["one", "two"], "w": [64, 64],
                      "h": [64, 8], "score": [0.5, 0.5], "id": [7, 8]})
    mapping = {"url": "image_link", "caption": "alt", "width": "w", "height": "h", "similarity": "score",
               "sample_id": "id"}
    subset, stats = select_file(table, mapping=mapping)
    assert subset.to_pydict() | {} == {"sample_id": ["7"], "url": ["http://c/1"], "caption": ["one"], "width": [64],
                                        "height": [64], "similarity": [0.5]}
    assert stats["filtered_min_size"] == 1
    with pytest.raises(MetadataError, match=r"m.parquet: data.columns maps 'caption' to 'title', which it lacks"):
        select_file(table, mapping={**mapping, "caption": "title"})


def test_select__null_punsafe_is_counted_and_follows_drop_unscored() -> None:
    table = laion400m(3).append_column("punsafe", pa.array([0.1, None, 0.9])).drop_columns(["NSFW"])
    subset, stats = select_file(table)
    assert subset.column("sample_id").to_pylist() == ["10"]
    assert stats["unscored"] == {"punsafe": 1} and stats["filtered_punsafe"] == 2  # the null and the 0.9
    kept, kept_stats = select_file(table, SelectConfig(drop_unscored=False))
    assert sorted(kept.column("sample_id").to_pylist()) == ["10", "11"] and kept_stats["unscored"] == {"punsafe": 1}
    assert kept_stats["filtered_punsafe"] == 1


def test_select__all_null_and_nan_values_are_unscored_not_errors() -> None:
    table = laion400m(3, WIDTH=[64.0, float("nan"), 64.0]).append_column("punsafe", pa.nulls(3))  # a null-type column
    subset, stats = select_file(table, SelectConfig(drop_unscored=False))
    assert subset.num_rows == 3 and stats["unscored"] == {"min_size": 1, "aspect": 1, "punsafe": 3}
    assert subset.column("width").to_pylist() == [64, None, 64] and subset.column("punsafe").type == pa.float64()
    assert select_file(table)[1]["filtered_min_size"] == 1 and select_file(table)[1]["filtered_punsafe"] == 2


WRONG_TYPES = {
    "int_url": (laion400m(2, URL=[1, 2]), r"m.parquet: column 'URL' \(read as 'url'\) is int64, expected a string"),
    "string_width": (laion400m(2, WIDTH=["64", "64"]), r"m.parquet: column 'WIDTH' \(read as 'width'\) is string"),
    "float_id": (laion400m(2, SAMPLE_ID=[1.5, 2.5]), r"column 'SAMPLE_ID' \(read as 'sample_id'\) is double"),
    "fractional_width": (laion400m(2, WIDTH=[64.5, 64.0]), r"m.parquet: column 'WIDTH' \(read as 'width'\) does not"),
    "no_url": (laion400m(2).drop_columns(["URL"]), r"m.parquet lacks column\(s\) \['url'\]"),
}


@pytest.mark.parametrize("case", list(WRONG_TYPES))
def test_select__wrong_column_is_one_metadata_error_naming_file_and_column(case: str) -> None:
    table, match = WRONG_TYPES[case]
    with pytest.raises(MetadataError, match=match):
        select_file(table)


def test_select__repeated_url_kept_once_by_smallest_rank() -> None:
    table = laion400m(6, URL=["u0", "u1", "u0", "u2", "u1", "u0"])
    subset, stats = select_file(table)
    assert sorted(subset.column("url").to_pylist()) == ["u0", "u1", "u2"] and stats["filtered_duplicate_url"] == 3
    ids = subset.column("sample_id").to_pylist()
    ranks = dict(zip(table.column("SAMPLE_ID").to_pylist(), hash_ints(table.column("SAMPLE_ID"), 0).tolist()))
    for url, sid in zip(subset.column("url").to_pylist(), ids):  # the occurrence of smallest rank was kept
        same = [s for s, u in zip(table.column("SAMPLE_ID").to_pylist(), table.column("URL").to_pylist()) if u == url]
        assert int(sid) == min(same, key=ranks.__getitem__)


def _many(n: int, seed: int = 0, distinct: float = 0.8) -> pa.Table:
    rng = np.random.default_rng(seed)
    urls = [f"http://m/{i}.jpg" for i in rng.integers(0, int(n * distinct), n)]  # 0.8: about a fifth repeated
    return pa.table({"url": urls, "caption": ["c"] * n, "width": rng.integers(16, 200, n),
                     "height": rng.integers(16, 200, n), "similarity": rng.uniform(0.2, 0.4, n),
                     "punsafe": rng.uniform(0, 0.7, n), "pwatermark": rng.uniform(0, 1, n)})


def test_select__same_subset_and_counts_for_any_chunking_order_independent_and_nested() -> None:
    table = _many(3000, distinct=2)  # some repeats, fewer than the slack of 60 among the first rows
    cfg = SelectConfig(target_count=300)
    whole, whole_stats = select_table(table, cfg)
    assert 0 < whole_stats["filtered_duplicate_url"] < 60
    for batch_rows, slack in ((7, 60), (500, 60), (1024, None), (3000, 60)):  # slack 60: rows dropped between chunks
        subset, stats = select_file(table, cfg, batch_rows=batch_rows, slack=slack)
        assert subset.equals(whole) and stats == whole_stats, (batch_rows, slack)
    shuffled = table.take(pa.array(np.random.default_rng(1).permutation(table.num_rows)))
    ids = set(whole.column("sample_id").to_pylist())
    assert set(select_table(shuffled, cfg)[0].column("sample_id").to_pylist()) == ids
    bigger = set(select_table(table, SelectConfig(target_count=600))[0].column("sample_id").to_pylist())
    assert ids < bigger and len(bigger) == 600
    assert set(select_table(table, SelectConfig(target_count=300, seed=1))[0].column("sample_id").to_pylist()) != ids
    assert whole_stats["rows_in"] == whole_stats["filtered"] + whole_stats["not_sampled"] + 300


def test_select__too_many_repeats_for_the_slack_runs_again() -> None:
    table = _many(3000)
    cfg = SelectConfig(target_count=300)
    sel = Selector(cfg, slack=2)
    sel.add(table, "m")
    with pytest.raises(SlackExceeded, match="repeated URLs"):
        sel.finish()
    assert select_table(table, cfg, slack=2)[0].equals(select_table(table, cfg)[0])


def test_select__no_row_left_gives_an_empty_subset_with_counts() -> None:
    subset, stats = select_file(laion400m(3, similarity=[0.1] * 3))
    assert subset.num_rows == 0 and stats["filtered_similarity"] == 3 and stats["selected"] == 0

"""Content digests (tasks/common/digests.py): by content, remembered by file identity, recomputed on any rewrite."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tasks.common import digests
from tasks.common.digests import DigestMemo, content_digest, is_remote


def test_content_digest__file_is_its_sha256_and_a_folder_its_sorted_listing(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.bin").write_bytes(b"a")
    (tmp_path / "d" / "sub" / "b.bin").write_bytes(b"b")
    assert content_digest(str(tmp_path / "d" / "a.bin")) == hashlib.sha256(b"a").hexdigest()
    folder = content_digest(str(tmp_path / "d"))
    (tmp_path / "d" / "sub" / "b.bin").write_bytes(b"B")
    assert content_digest(str(tmp_path / "d")) != folder
    with pytest.raises(FileNotFoundError, match="absent"):
        content_digest(str(tmp_path / "absent"))


def test_memo__unchanged_file_is_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memo, f = DigestMemo(tmp_path / "memo.sqlite"), tmp_path / "big.bin"
    f.write_bytes(b"x" * 1000)
    first = content_digest(str(f), memo)
    reads: list[str] = []
    real = digests.sha256_file
    monkeypatch.setattr(digests, "sha256_file", lambda uri: reads.append(uri) or real(uri))
    assert content_digest(str(f), memo) == first and reads == []


def test_memo__in_place_rewrite_with_same_size_and_mtime_is_hashed_again(tmp_path: Path) -> None:
    memo, f = DigestMemo(tmp_path / "memo.sqlite"), tmp_path / "urls.parquet"
    f.write_bytes(b"old content")
    st = os.stat(f)
    first = content_digest(str(f), memo)
    f.write_bytes(b"new content")  # same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime: only ctime tells
    assert content_digest(str(f), memo) == hashlib.sha256(b"new content").hexdigest() != first


def test_is_remote__s3_is_local_paths_are_not(tmp_path: Path) -> None:
    assert is_remote("s3://bucket/key") and not is_remote(str(tmp_path)) and not is_remote(f"file://{tmp_path}")

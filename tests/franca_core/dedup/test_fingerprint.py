"""Reading damaged webdataset shards (img2dataset_io.iter_tar) and fingerprinting a shard set with damage + progress."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import cv2
import fsspec
import numpy as np
import pytest

from franca_core.data.img2dataset_io import BadShardError, TarDamage, iter_tar
from franca_core.data.shards import write_shards
from franca_core.dedup.fingerprint import Progress, fingerprint_shards

FS = fsspec.filesystem("file")


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return cv2.imencode(".jpg", rng.integers(0, 255, (24, 32, 3), np.uint8))[1].tobytes()


@pytest.fixture()
def good_tars(tmp_path: Path) -> list[Path]:
    """Three shards of 6 samples each (``s00`` ... ``s17``), written by the project's shard writer."""
    write_shards(((f"s{i:02d}", _jpeg(i), f"caption {i}") for i in range(18)), str(tmp_path / "good"), shard_size=6)
    return sorted((tmp_path / "good").glob("*.tar"))


def _members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    """A copy of tar ``src`` with the bodies of the members named in ``replace`` swapped."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for member in tin:
            body = replace.get(member.name, tin.extractfile(member).read())  # type: ignore[union-attr]
            member.size = len(body)
            tout.addfile(member, io.BytesIO(body))
    return dst


def _read(path: Path) -> tuple[list[str], TarDamage]:
    damage = TarDamage(str(path))
    return [key for key, _, _ in iter_tar(FS, str(path), damage)], damage


def test_iter_tar__good_shard_reads_whole_with_json(good_tars: list[Path]) -> None:
    samples = list(iter_tar(FS, str(good_tars[0])))
    assert [k for k, _, _ in samples] == [f"s{i:02d}" for i in range(6)]
    assert samples[2][2]["caption"] == "caption 2" and samples[2][1] == _jpeg(2)


@pytest.mark.parametrize("where", ["inside_body", "at_header"])
def test_iter_tar__truncated_keeps_samples_before_the_cut(good_tars: list[Path], tmp_path: Path, where: str) -> None:
    image = next(m for m in _members(good_tars[0]) if m.name == "s03.jpg")
    # inside s03's image body; or exactly at s03's header, a cut tarfile alone reads as a complete archive
    cut = image.offset_data + image.size // 2 if where == "inside_body" else image.offset
    path = tmp_path / "cut.tar"
    path.write_bytes(good_tars[0].read_bytes()[:cut])
    keys, damage = _read(path)
    # at a header cut the sample being read (s02) may be incomplete: it is skipped too
    assert keys == (["s00", "s01", "s02"] if where == "inside_body" else ["s00", "s01"])
    assert damage.error.startswith("ReadError") and damage.samples == len(keys)
    assert [key for key, _ in damage.bad_members] == (["s03"] if where == "inside_body" else ["s02"])


@pytest.mark.parametrize(("content", "error"), [(b"", "empty file"), (b"not a tar at all\n" * 64, "invalid header")])
def test_iter_tar__empty_or_garbage_file_is_damage(tmp_path: Path, content: bytes, error: str) -> None:
    path = tmp_path / "bad.tar"
    path.write_bytes(content)
    keys, damage = _read(path)
    assert keys == [] and error in damage.error and damage
    with pytest.raises(BadShardError, match=error):
        list(iter_tar(FS, str(path)))


def test_iter_tar__tar_without_members_is_not_damage(tmp_path: Path) -> None:
    path = tmp_path / "empty.tar"  # what img2dataset writes for a shard whose URLs all failed
    with tarfile.open(path, "w"):
        pass
    keys, damage = _read(path)
    assert keys == [] and not damage


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_iter_tar__bad_json_member_skips_only_its_sample(good_tars: list[Path], tmp_path: Path, body: bytes) -> None:
    path = _rewrite(good_tars[1], tmp_path / "badjson.tar", {"s08.json": body})
    keys, damage = _read(path)
    assert keys == ["s06", "s07", "s09", "s10", "s11"] and damage.error == ""
    assert [k for k, _ in damage.bad_members] == ["s08"] and "s08.json" in damage.bad_members[0][1]
    with pytest.raises(BadShardError, match="s08"):
        list(iter_tar(FS, str(path)))


@pytest.mark.parametrize("workers", [1, 2])
def test_fingerprint_shards__damaged_shards_counted_rest_kept(good_tars: list[Path], tmp_path: Path,
                                                              workers: int) -> None:
    empty, cut = tmp_path / "empty.tar", tmp_path / "cut.tar"
    empty.write_bytes(b"")
    cut.write_bytes(good_tars[2].read_bytes()[:next(m.offset_data + 5 for m in _members(good_tars[2])
                                                     if m.name == "s14.jpg")])
    badjson = _rewrite(good_tars[1], tmp_path / "badjson.tar", {"s07.json": b"{"})
    memberless = tmp_path / "memberless.tar"  # img2dataset's shard whose URLs all failed: not damage
    with tarfile.open(memberless, "w"):
        pass
    uris = [str(good_tars[0]), str(empty), str(badjson), str(memberless), str(cut)]
    seen: list[Progress] = []
    fp = fingerprint_shards(uris, workers=workers, progress=seen.append)
    expected = [f"s{i:02d}" for i in [*range(6), 6, 8, 9, 10, 11, 12, 13]]
    assert fp.sample_id == expected and fp.shard[-1] == str(cut) and not any(fp.hashes.error)
    assert [(d.shard, bool(d.error), len(d.bad_members)) for d in fp.damage] == [
        (str(empty), True, 0), (str(badjson), False, 1), (str(cut), True, 1)]
    assert fp.meta["caption"][:2] == ["caption 0", "caption 1"] and fp.meta["similarity"] == [None] * len(fp)
    assert sorted(p.shards_done for p in seen) == [1, 2, 3, 4, 5]
    last = max(seen, key=lambda p: p.shards_done)
    assert (last.images, last.bad_shards, last.shards_total) == (len(expected), 2, 5) and last.eta_s == 0.0
    assert "5/5 shards, 2 bad, 13 images" in str(last) and "images/s, ETA 00:00:00" in str(last)


def test_progress__rate_and_eta_from_the_finished_shards() -> None:
    p = Progress(shards_done=2, shards_total=10, images=300, bad_shards=0, elapsed_s=6.0)
    assert p.images_per_s == 50.0 and p.eta_s == 24.0
    assert str(p) == "2/10 shards, 300 images, 50.0 images/s, ETA 00:00:24"
    assert str(Progress(1, 101, 10, 0, 3600.0)).endswith("ETA 100:00:00")

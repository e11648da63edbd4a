"""The streaming shard loader: kept samples only, disjoint splits, deterministic order, resume by batch count."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from franca_core.config import TrainConfig, load_config
from franca_core.data.shards import ShardIndex, build_loader, write_manifest, write_shards
from franca_core.data.synthetic import iter_images


def _records(n: int) -> list[tuple[str, bytes, str]]:
    out = []
    for i, (image, _, label) in enumerate(iter_images(n, seed=0, size=32)):
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        out.append((f"{i:09d}", buf.getvalue(), f"shape {label}"))
    return out


def _cfg(*extra: str) -> TrainConfig:
    return load_config("tiny", ["train.optim.batch_size=3", "train.crops.n_local=1", "train.crops.global_size=32",
                                "train.crops.local_size=16", "train.model.img_size=32", *extra]).train


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> ShardIndex:
    """5 shards of 8 samples; every 5th sample is dropped by dedup (kept = False)."""
    root = tmp_path_factory.mktemp("shards")
    table = write_shards(_records(40), str(root), shard_size=8)
    kept = pa.array([int(k) % 5 != 4 for k in table["key"].to_pylist()])
    table = table.set_column(table.schema.get_field_index("kept"), "kept", kept)
    return ShardIndex.from_manifest(write_manifest(table, str(Path(root) / "manifest.parquet")))


def _ids(index: ShardIndex, cfg: TrainConfig, n: int, rank: int = 0, world: int = 1, start: int = 0) -> list[list[int]]:
    it = iter(build_loader(index, cfg, rank, world, start_batches=start))
    return [next(it)["ids"].tolist() for _ in range(n)]


def test_shard_index__keeps_only_kept_rows(index: ShardIndex) -> None:
    assert index.n_samples == 32 and len(index.shards) == 5
    assert all(int(k) % 5 != 4 for keys in index.keys for k in keys)


@pytest.mark.parametrize("workers", [0, 2])
def test_build_loader__batch_layout_and_full_epoch(index: ShardIndex, workers: int) -> None:
    cfg = _cfg(f"train.loader_workers={workers}")
    batch = next(iter(build_loader(index, cfg)))
    assert batch["global_crops"].shape == (6, 3, 32, 32) and batch["local_crops"].shape == (3, 3, 16, 16)
    assert batch["masks"].shape == (6, 16) and batch["masks"].any()
    # One slot reads 30 of the 32 kept samples of epoch 0 in 10 batches; with 2 workers each reads its own shards
    # (5 shards: 3 + 2, so the smaller one starts its next epoch first): no repeats before that.
    n = 10 if workers == 0 else 6
    seen = Counter(i for b in _ids(index, cfg, n) for i in b)
    assert max(seen.values()) == 1 and len(seen) == 3 * n


def test_build_loader__ranks_and_workers_read_disjoint_samples(index: ShardIndex) -> None:
    cfg = _cfg("train.loader_workers=2")
    per_rank = [{i for b in _ids(index, cfg, 2, rank=r, world=2) for i in b} for r in range(2)]
    assert not per_rank[0] & per_rank[1]


@pytest.mark.parametrize("workers", [0, 2])
def test_build_loader__resume_continues_the_same_order(index: ShardIndex, workers: int) -> None:
    cfg = _cfg(f"train.loader_workers={workers}")
    full = _ids(index, cfg, 14)  # crosses the epoch boundary (32 samples = 10.7 batches)
    assert _ids(index, cfg, 9, start=5) == full[5:]
    first, again = next(iter(build_loader(index, cfg))), next(iter(build_loader(index, cfg)))
    assert all(torch.equal(first[k], again[k]) for k in first), "crops and masks must be reproducible"


def test_build_loader__epochs_reshuffle(index: ShardIndex) -> None:
    cfg = _cfg()
    ids = [i for b in _ids(index, cfg, 22) for i in b]
    assert sorted(ids[:32]) == sorted(ids[32:64]) and ids[:32] != ids[32:64]


def test_shard_index__missing_files_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        ShardIndex.from_manifest(str(tmp_path / "missing.parquet"))
    broken = ShardIndex((str(tmp_path / "gone.tar"),), (("000000000",),))
    with pytest.raises(FileNotFoundError):
        next(iter(build_loader(broken, _cfg("train.optim.batch_size=1", "train.loader_workers=0"))))


def test_build_loader__trains_on_the_readable_head_of_a_truncated_shard(tmp_path: Path) -> None:
    # A shard cut mid-way: dedup keeps the samples before the cut; the loader must not read past them.
    table = write_shards(_records(8), str(tmp_path), shard_size=8)
    shard = Path(table["shard"][0].as_py())
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) * 3 // 4])
    kept = pa.array([int(k) < 4 for k in table["key"].to_pylist()])  # the first half: whole before the cut
    table = table.set_column(table.schema.get_field_index("kept"), "kept", kept)
    index = ShardIndex.from_manifest(write_manifest(table, str(tmp_path / "manifest.parquet")))
    ids = _ids(index, _cfg("train.optim.batch_size=2", "train.loader_workers=0"), 2)
    assert sorted(i for b in ids for i in b) == [0, 1, 2, 3]

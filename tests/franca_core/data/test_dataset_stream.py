"""DatasetStream: a resumed loader continues the uninterrupted order, crops included; ranks split the set."""

from __future__ import annotations

from itertools import islice

import pytest
import torch

from franca_core.config import load_config
from franca_core.data.dataset_stream import build_dataset_loader
from franca_core.data.synthetic import iter_images


@pytest.fixture(scope="module")
def images() -> list:
    return [img for img, _, _ in iter_images(12, seed=3, size=32)]


def _cfg(loader_workers: int):
    return load_config("tiny", ["train.optim.batch_size=2", "train.crops.global_size=16", "train.crops.local_size=8",
                                "train.crops.n_local=1", f"train.loader_workers={loader_workers}"]).train


@pytest.mark.parametrize("loader_workers", [0, 2])
def test_dataset_stream__resume_continues_the_order_and_the_crops(images: list, loader_workers: int) -> None:
    cfg = _cfg(loader_workers)
    whole = list(islice(build_dataset_loader(images, cfg, rank=1, world_size=2), 9))  # > one epoch of 3 per rank
    resumed = list(islice(build_dataset_loader(images, cfg, rank=1, world_size=2, start_batches=5), 4))
    for a, b in zip(whole[5:], resumed, strict=True):
        assert torch.equal(a["ids"], b["ids"]) and torch.equal(a["global_crops"], b["global_crops"])
        assert torch.equal(a["masks"], b["masks"])


def test_dataset_stream__ranks_take_disjoint_samples_of_an_epoch(images: list) -> None:
    cfg = _cfg(0)
    ids = [torch.cat([b["ids"] for b in islice(build_dataset_loader(images, cfg, r, 2), 3)]) for r in (0, 1)]
    assert sorted(torch.cat(ids).tolist()) == list(range(12))


def test_dataset_stream__more_slots_than_images_raises(images: list) -> None:
    with pytest.raises(ValueError, match="cannot feed"):
        build_dataset_loader(images[:3], _cfg(2), 0, 2)

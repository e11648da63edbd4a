from __future__ import annotations

import pytest
import torch

from franca_core.config import MaskingConfig
from franca_core.data.collate import make_masks
from franca_core.masking.cyclic_mask import cyclic_mask, stratified_mask_counts


@pytest.mark.parametrize("n_masked", [0, 1, 25, 100, 166, 255, 256])
def test_cyclic_mask__exact_masked_count(n_masked: int) -> None:
    g = torch.Generator().manual_seed(n_masked)
    for _ in range(20):
        assert int(cyclic_mask(16, 16, n_masked, g).sum()) == n_masked


def test_cyclic_mask__rejects_impossible_count() -> None:
    with pytest.raises(ValueError, match="n_masked"):
        cyclic_mask(4, 4, 17)


def _frequency(roll: bool, n: int = 4000) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    counts = stratified_mask_counts(n, 256, 0.1, 0.65, g)
    freq = torch.zeros(16, 16)
    for m in counts:
        freq += cyclic_mask(16, 16, m, g, roll=roll).float()
    return freq / n


def test_cyclic_mask__roll_flattens_position_frequency() -> None:
    with_roll, without = _frequency(True), _frequency(False)
    assert with_roll.max() - with_roll.min() < 0.08, (with_roll.min(), with_roll.max())
    assert without.max() - without.min() > 0.5, (without.min(), without.max())


def test_stratified_mask_counts__one_per_stratum() -> None:
    counts = stratified_mask_counts(10, 1000, 0.1, 0.65, torch.Generator().manual_seed(0))
    edges = torch.linspace(0.1, 0.65, 11)
    for j, c in enumerate(counts):
        assert int(1000 * edges[j]) <= c <= int(1000 * edges[j + 1])


def test_make_masks__half_of_global_crops_masked() -> None:
    masks = make_masks(16, (8, 8), MaskingConfig(), torch.Generator().manual_seed(0))
    assert masks.shape == (16, 64)
    assert int((masks.sum(1) > 0).sum()) == 8

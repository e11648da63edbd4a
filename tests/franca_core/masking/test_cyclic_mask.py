"""CyclicMask against values computed here from FRANCA_METHOD.md's statement of Franca's generator.

The expected figures come from an exact enumeration over the aspect distribution (``_exact_shapes``): the log aspect
is uniform on [lo, hi] and (h, w) is a step function of it, changing only where sqrt(v a) or sqrt(v / a) crosses an
integer; each constant piece has probability length / (hi - lo). Samples from the implementation are compared with
those values at a tolerance of 5 standard errors of the sample mean (sqrt(0.25 / n) bounds any Bernoulli mean's).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from franca_core.config import MaskingConfig
from franca_core.data.collate import make_masks
from franca_core.masking.cyclic_mask import cyclic_mask, stratified_mask_counts, visible_block


def _exact_shapes(H: int, W: int, v: int, min_aspect: float = 0.3) -> dict[tuple[int, int], float]:
    """P(h, w) of the visible rectangle for v visible cells (FRANCA_METHOD.md, CyclicMask steps 1-2)."""
    lo = max(math.log(min_aspect), math.log(v / W**2))
    hi = min(-math.log(min_aspect), math.log(H**2 / (v + 1e-5)))
    lo = min(lo, hi)

    def shape(t: float) -> tuple[int, int]:
        return min(H, math.ceil(math.sqrt(v * math.exp(t)))), min(W, math.ceil(math.sqrt(v / math.exp(t))))

    if hi - lo < 1e-12:
        return {shape(hi): 1.0}
    # h steps where v a = k^2 (t = log(k^2 / v)); w steps where v / a = k^2 (t = log(v / k^2))
    cuts = [math.log(k * k / v) for k in range(1, H + 1)] + [math.log(v / (k * k)) for k in range(1, W + 1)]
    edges = [lo, *sorted(t for t in cuts if lo < t < hi), hi]
    probs: Counter[tuple[int, int]] = Counter()
    for a, b in zip(edges, edges[1:]):
        probs[shape((a + b) / 2)] += (b - a) / (hi - lo)
    return dict(probs)


def _exact_masked_frequency(H: int, W: int, m: int) -> np.ndarray:
    """E[mask] per position without the roll: top/left uniform over the placements that fit, first v cells in
    raster order visible."""
    v = H * W - m
    if m == 0:
        return np.zeros((H, W))
    visible = np.zeros((H, W))
    for (h, w), p in _exact_shapes(H, W, v).items():
        block = (np.arange(h * w) < v).reshape(h, w).astype(float)
        placed = np.zeros((H, W))
        for top in range(H - h + 1):
            for left in range(W - w + 1):
                placed[top : top + h, left : left + w] += block
        visible += p * placed / ((H - h + 1) * (W - w + 1))
    return 1.0 - visible


@pytest.mark.parametrize("n_masked", [0, 1, 25, 100, 166, 255, 256])
def test_cyclic_mask__exact_masked_count(n_masked: int) -> None:
    g = torch.Generator().manual_seed(n_masked)
    for _ in range(20):
        assert int(cyclic_mask(16, 16, n_masked, g).sum()) == n_masked


@pytest.mark.parametrize(("h", "w"), [(16, 16), (8, 12), (2, 16), (16, 3)])
def test_cyclic_mask__exact_masked_count_on_any_grid(h: int, w: int) -> None:
    g = torch.Generator().manual_seed(h * w)
    for m in range(h * w + 1):
        assert int(cyclic_mask(h, w, m, g, roll=False).sum()) == m, (h, w, m)


def test_cyclic_mask__rejects_impossible_count() -> None:
    with pytest.raises(ValueError, match="n_masked"):
        cyclic_mask(4, 4, 17)


def test_visible_block__shape_distribution_matches_franca_generator() -> None:
    n, v = 20_000, 166
    g = torch.Generator().manual_seed(0)
    draws = [visible_block(16, 16, v, g) for _ in range(n)]
    observed = Counter((h, w) for _, _, h, w in draws)
    expected = _exact_shapes(16, 16, v)
    tol = 5 * math.sqrt(0.25 / n)
    assert set(observed) <= set(expected), set(observed) - set(expected)
    for hw, p in expected.items():
        assert abs(observed[hw] / n - p) < tol, (hw, observed[hw] / n, p)
    band = sum(p for (h, w), p in expected.items() if h == 16 or w == 16)
    observed_band = sum(c for (h, w), c in observed.items() if h == 16 or w == 16) / n
    assert abs(observed_band - band) < tol, (observed_band, band)
    # tight sizing (w = ceil(v / h)) makes about 3 in 4 blocks 16x11 or 11x16 bands; Franca's draws far fewer
    assert band < 0.4 and observed[(16, 11)] + observed[(11, 16)] < 0.4 * n
    for top, left, h, w in draws[:2000]:
        assert 0 <= top <= 16 - h and 0 <= left <= 16 - w and h * w >= v


def test_cyclic_mask__unrolled_position_frequency_matches_franca_generator() -> None:
    n = 8000
    g = torch.Generator().manual_seed(1)
    counts = stratified_mask_counts(n, 256, 0.1, 0.65, g)
    freq = torch.zeros(16, 16)
    for m in counts:
        freq += cyclic_mask(16, 16, m, g, roll=False).float()
    freq /= n
    per_count = {m: _exact_masked_frequency(16, 16, m) for m in set(counts)}
    expected = sum(per_count[m] * k for m, k in Counter(counts).items()) / n
    gap = np.abs(freq.numpy() - expected).max()
    assert gap < 5 * math.sqrt(0.25 / n), gap  # 0.028; tight sizing is off by up to 0.17
    assert expected.max() - expected.min() > 0.5  # without the roll the frequency is far from flat


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

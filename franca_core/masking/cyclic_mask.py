"""CyclicMask: masked image modelling masks whose visible block wraps around the grid like a torus.

Franca (arXiv 2507.14137), Sec. 3.3; reference code ``valeoai/Franca: franca/data/masking.py`` (``BlockMasking`` /
``InverseBlockMasking``); FRANCA_METHOD.md "CyclicMask". A block mask puts masked cells more often near the borders
than in the centre; rolling the visible rectangle by a uniform random shift on both axes makes the per-position mask
frequency flat, so no position is systematically visible to the student.

One mask over an (H, W) patch grid with m masked cells, as Franca's generator draws it (v = H*W - m visible):
    1. log-aspect range narrowed to what fits: lo = max(log min_aspect, log(v / W^2)),
       hi = min(-log min_aspect, log(H^2 / (v + 1e-5))), lo = hi if lo > hi;
    2. a = exp(U(lo, hi)); h = ceil(sqrt(v a)), w = ceil(sqrt(v / a)), each clipped to the grid;
    3. top ~ U{0..H-h} only when h < H, left ~ U{0..W-w} only when w < W (no draw for a full side);
    4. the first v cells of the rectangle in raster order are visible;
    then rolled by (U{0..H-1}, U{0..W-1}) with wrap-around, then inverted (masked = not visible).
Both sides come from the aspect (never one side tightly from the other, which makes most blocks full-height or
full-width bands).

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> mask = cyclic_mask(16, 16, n_masked=100, generator=g)
    >>> mask.shape, int(mask.sum())
    (torch.Size([16, 16]), 100)
"""

from __future__ import annotations

import math

import torch


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator | None, high: int) -> int:
    """Uniform integer in [0, high)."""
    return int(torch.randint(high, (), generator=generator)) if high > 0 else 0


def log_aspect_range(h: int, w: int, n_visible: int, min_aspect: float = 0.3) -> tuple[float, float]:
    """(lo, hi) of the log aspect (height / width) Franca draws from for ``n_visible`` cells on an (h, w) grid."""
    lo = max(math.log(min_aspect), math.log(n_visible / w**2))
    hi = min(math.log(1 / min_aspect), math.log(h**2 / (n_visible + 1e-5)))
    return min(lo, hi), hi


def visible_rectangle(h: int, w: int, n_visible: int, aspect: float) -> tuple[int, int]:
    """Height and width of the visible rectangle of ``aspect`` (height / width) for ``n_visible`` cells.

    Both sides from the aspect, ceil(sqrt(v a)) by ceil(sqrt(v / a)), clipped to the grid. On a grid whose own aspect
    is within [min_aspect, 1/min_aspect], the narrowed range (``log_aspect_range``) keeps h*w >= v (checked for all
    v on grids up to 39x39). On a more elongated grid the range collapses and clipping can leave fewer than v cells;
    Franca's generator then masks more than asked, here the unclipped side grows so the mask count stays exact.
    """
    rh = min(h, max(1, math.ceil(math.sqrt(n_visible * aspect))))
    rw = min(w, max(1, math.ceil(math.sqrt(n_visible / aspect))))
    if rh * rw < n_visible:  # only on grids more elongated than the aspect range
        if rw == w:
            rh = min(h, math.ceil(n_visible / rw))
        else:
            rw = min(w, math.ceil(n_visible / rh))
    return rh, rw


def visible_block(
    h: int, w: int, n_visible: int, generator: torch.Generator | None = None, min_aspect: float = 0.3
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of one visible rectangle before the roll (steps 1-3 of the module docstring)."""
    lo, hi = log_aspect_range(h, w, n_visible, min_aspect)
    rh, rw = visible_rectangle(h, w, n_visible, math.exp(_uniform(generator, lo, hi)))
    top = _randint(generator, h - rh + 1) if rh < h else 0
    left = _randint(generator, w - rw + 1) if rw < w else 0
    return top, left, rh, rw


def cyclic_mask(
    h: int,
    w: int,
    n_masked: int,
    generator: torch.Generator | None = None,
    roll: bool = True,
    min_aspect: float = 0.3,
) -> torch.Tensor:
    """One CyclicMask of shape (h, w), True = masked, with exactly ``n_masked`` masked cells."""
    n = h * w
    if not 0 <= n_masked <= n:
        raise ValueError(f"n_masked must be in [0, {n}] for a {h}x{w} grid, got {n_masked}")
    n_visible = n - n_masked
    visible = torch.zeros(h, w, dtype=torch.bool)
    if 0 < n_visible < n:  # m = 0 masks nothing and m = N everything, without drawing (as Franca's generator)
        top, left, rh, rw = visible_block(h, w, n_visible, generator, min_aspect)
        block = torch.zeros(rh * rw, dtype=torch.bool)
        block[:n_visible] = True  # exactly v cells of the rectangle, in raster order
        visible[top : top + rh, left : left + rw] = block.view(rh, rw)
        if roll:
            visible = torch.roll(visible, shifts=(_randint(generator, h), _randint(generator, w)), dims=(0, 1))
    elif n_visible == n:
        visible[:] = True
    return ~visible


def stratified_mask_counts(
    n_crops: int, n_patches: int, ratio_min: float, ratio_max: float, generator: torch.Generator | None = None
) -> list[int]:
    """Masked-cell counts for ``n_crops`` crops: crop j draws r_j ~ U(p_j, p_j+1), p = linspace(min, max, n+1)."""
    edges = torch.linspace(ratio_min, ratio_max, n_crops + 1).tolist()
    return [int(n_patches * _uniform(generator, edges[j], edges[j + 1])) for j in range(n_crops)]

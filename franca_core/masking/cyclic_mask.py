"""CyclicMask: masked image modelling masks whose visible block wraps around the grid like a torus.

Franca (arXiv 2507.14137), Sec. 3.3; reference code ``valeoai/Franca: franca/data/masking.py``. A block mask
(DINOv2's ``MaskingGenerator``) puts masked cells more often near the borders than in the centre; rolling the
visible rectangle by a uniform random shift on both axes makes the per-position mask frequency flat, so no
position is systematically visible to the student.

One mask over an (h, w) patch grid, with m masked cells:
    v = h*w - m visible cells form a rectangle of log-uniform aspect in [min_aspect, 1/min_aspect], clipped to the
    grid, placed uniformly, cut to exactly v cells in raster order, rolled by (U[0,h), U[0,w)), then inverted.

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


def visible_rectangle(h: int, w: int, n_visible: int, aspect: float) -> tuple[int, int]:
    """Height and width of the smallest rectangle of about ``aspect`` (h/w) holding ``n_visible`` cells in the grid."""
    rh = min(h, max(1, math.ceil(math.sqrt(n_visible * aspect))))
    rw = min(w, max(1, math.ceil(n_visible / rh)))
    rh = min(h, max(rh, math.ceil(n_visible / rw)))  # grow the other side when clipping made it too small
    return rh, rw


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
    if n_visible > 0:
        aspect = math.exp(_uniform(generator, math.log(min_aspect), math.log(1 / min_aspect)))
        rh, rw = visible_rectangle(h, w, n_visible, aspect)
        top, left = _randint(generator, h - rh + 1), _randint(generator, w - rw + 1)
        block = torch.zeros(rh * rw, dtype=torch.bool)
        block[:n_visible] = True  # exactly v cells of the rectangle, in raster order
        visible[top : top + rh, left : left + rw] = block.view(rh, rw)
        if roll:
            visible = torch.roll(visible, shifts=(_randint(generator, h), _randint(generator, w)), dims=(0, 1))
    return ~visible


def stratified_mask_counts(
    n_crops: int, n_patches: int, ratio_min: float, ratio_max: float, generator: torch.Generator | None = None
) -> list[int]:
    """Masked-cell counts for ``n_crops`` crops: crop j draws r_j ~ U(p_j, p_j+1), p = linspace(min, max, n+1)."""
    edges = torch.linspace(ratio_min, ratio_max, n_crops + 1).tolist()
    return [int(n_patches * _uniform(generator, edges[j], edges[j + 1])) for j in range(n_crops)]

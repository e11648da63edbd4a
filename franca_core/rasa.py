"""RASA: Removal of Absolute Spatial Attributes from frozen patch tokens (post-training).

Reference: Franca (arXiv 2507.14137), section "RASA"; ``valeoai/Franca: rasa/src/rasa.py`` (training step, targets)
and ``rasa/src/rasa_head.py: decompose_pos_2D`` (Gram-Schmidt + projection); FRANCA_METHOD.md "RASA".

Round t trains a fresh ``Linear(D -> 2, bias=False)`` + sigmoid to regress the normalised grid position
(r / (h-1), c / (w-1)) of every patch token from the residual features (MSE, AdamW, cosine lr, no weight decay),
Gram-Schmidt orthonormalises its two weight rows into u_r, u_c and projects that plane out:
x <- x - <x, u_r> u_r - <x, u_c> u_c. After all rounds the composite is one (D, D) matrix ``P`` applied to patch
tokens as ``x @ P``; CLS is never touched.

How the rounds compose (``RasaConfig.composition``, FRANCA_METHOD.md "RASA"):
- ``sequential`` (Franca's code): each round's two rows are orthonormalised with each other only, and the composite is
  the product of the per-round projections in fitting order, P = P_1 P_2 ... P_T with P_t = I - u_r u_r^T - u_c u_c^T.
  A later plane may lean into an earlier one, so P is neither symmetric nor idempotent and its output can keep
  components along earlier planes.
- ``orthogonal``: each new pair is also orthogonalised against the planes of all earlier rounds. On the residual
  features (which have no component in those planes) this changes no prediction of the round's regressor, and the
  composite is exactly the orthogonal projector ``I - U^T U`` (U: all directions, (2 * rounds, D)), symmetric and
  idempotent. On the same round weights the two maps differ by a few percent.
In both, the stored ``directions`` are the per-round planes as applied, so projecting them out round by round
reproduces ``matrix``.

Augmentation (flips and 90-degree rotations) is done on the images before the backbone (``dihedral``), so a token's
target is always its cell in the grid the backbone saw: a regressor can only use absolute-position signal, not
"sky is at the top" content cues. Square grids use all 8 elements of the dihedral group, others the 4 flips.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from franca_core.config import RasaConfig


def chance_mse(h: int, w: int | None = None) -> float:
    """MSE of predicting 0.5 for normalised (row, col) on an (h, w) grid: (n^2-1) / (12 (n-1)^2) per axis.

    0.0944 at n = 16; the mean over both axes for a non-square grid.
    """
    w = h if w is None else w

    def axis(n: int) -> float:
        return (n * n - 1) / (12 * (n - 1) ** 2) if n > 1 else 0.0

    return (axis(h) + axis(w)) / 2


def position_targets(h: int, w: int) -> torch.Tensor:
    """(h * w, 2) normalised (row, col) of each cell in raster order."""
    rows = torch.arange(h, dtype=torch.float32) / max(h - 1, 1)
    cols = torch.arange(w, dtype=torch.float32) / max(w - 1, 1)
    r, c = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([r.flatten(), c.flatten()], dim=-1)


def dihedral(images: torch.Tensor, k: int) -> torch.Tensor:
    """Element ``k`` (0..7) of the dihedral group on (B, C, H, W): ``k % 4`` quarter turns, then an h-flip if k >= 4."""
    out = torch.rot90(images, k % 4, dims=(-2, -1)) if k % 4 else images
    return out.flip(-1) if k >= 4 else out


def dihedral_choices(h: int, w: int) -> list[int]:
    """Dihedral elements that keep an (h, w) grid's shape: all 8 when square, else identity/flips/half turn."""
    return list(range(8)) if h == w else [0, 2, 4, 6]


@dataclass(frozen=True)
class RasaRound:
    """Held-out position MSE of a fresh regressor before and after removing this round's plane."""

    round: int
    mse_before: float
    mse_after: float


@dataclass
class RasaResult:
    """A fitted RASA projection.

    Attributes:
        matrix: (D, D) composite; patch tokens ``x`` (..., D) become ``x @ matrix``.
        directions: (2 * rounds, D) unit rows, two per round in fitting order (all orthonormal when
            ``composition`` is orthogonal; orthonormal within each round when sequential).
        rounds: per-round held-out MSE before / after.
        chance: MSE of a constant 0.5 prediction on this grid.
        grid: (h, w) of the patch grid it was fitted on.
        composition: how the rounds were composed (``RasaConfig.composition``).
    """

    matrix: torch.Tensor
    directions: torch.Tensor
    rounds: list[RasaRound] = field(default_factory=list)
    chance: float = 0.0
    grid: tuple[int, int] = (0, 0)
    composition: str = "orthogonal"

    @property
    def mse_before(self) -> float:
        return self.rounds[0].mse_before if self.rounds else float("nan")

    @property
    def mse_after(self) -> float:
        return self.rounds[-1].mse_after if self.rounds else float("nan")

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures (no tensors)."""
        return {"mse_before": self.mse_before, "mse_after": self.mse_after, "chance": self.chance,
                "grid": list(self.grid), "composition": self.composition, "rounds": [asdict(r) for r in self.rounds]}


def apply_projection(tokens: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Project (..., D) tokens with a (D, D) RASA matrix as ``x @ P`` (not symmetric when composed sequentially)."""
    return tokens @ matrix.to(tokens.dtype)


def project_out(tokens: torch.Tensor, plane: torch.Tensor) -> torch.Tensor:
    """x - sum_i <x, u_i> u_i for the orthonormal rows u_i of ``plane`` (k, D); tokens (..., D)."""
    return tokens - (tokens @ plane.t()) @ plane


def gram_schmidt(rows: torch.Tensor, basis: torch.Tensor | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Orthonormalise ``rows`` (k, D) in order, also against an orthonormal ``basis`` (m, D); returns (k, D).

    Done twice ("twice is enough", Kahan/Parlett) so that 18+ directions stay orthonormal to float32 precision.
    """
    out: list[torch.Tensor] = []
    prior = basis if basis is not None else rows.new_zeros((0, rows.shape[1]))
    for row in rows.double():
        v = row
        for _ in range(2):
            for u in [*prior.double(), *out]:
                v = v - (v @ u) * u
        norm = v.norm()
        if norm < eps:
            raise ValueError("RASA regressor weights are degenerate (a zero or repeated direction); "
                             "the features may carry no linear position signal left")
        out.append(v / norm)
    return torch.stack(out).to(rows.dtype)


def round_plane(weight: torch.Tensor, earlier: torch.Tensor | None, composition: str) -> torch.Tensor:
    """The (2, D) orthonormal plane one round removes, from its regressor's (2, D) weight.

    ``orthogonal`` also orthogonalises it against the ``earlier`` rounds' directions; ``sequential`` (Franca's code)
    against its own two rows only.
    """
    if composition not in ("orthogonal", "sequential"):
        raise ValueError(f"RASA composition must be 'orthogonal' or 'sequential', got {composition!r}")
    return gram_schmidt(weight, earlier if composition == "orthogonal" else None)


def composite_matrix(directions: torch.Tensor, composition: str) -> torch.Tensor:
    """The (D, D) map of the (2 * rounds, D) per-round planes, for tokens as ``x @ P``.

    ``orthogonal``: I - U^T U (the planes are mutually orthonormal). ``sequential``: the product of the per-round
    projections I - U_t^T U_t in fitting order, computed in float64.
    """
    d = directions.shape[1]
    if composition == "orthogonal":
        return torch.eye(d, dtype=directions.dtype) - directions.t() @ directions
    eye = torch.eye(d, dtype=torch.float64)
    matrix = eye
    for start in range(0, directions.shape[0], 2):
        plane = directions[start : start + 2].double()
        matrix = matrix @ (eye - plane.t() @ plane)
    return matrix.to(directions.dtype)


def compose_rounds(weights: Sequence[torch.Tensor], composition: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(matrix (D, D), directions (2 * rounds, D)) of a sequence of (2, D) round weights, in fitting order."""
    if not weights:
        raise ValueError("RASA needs at least one round's weights to compose")
    directions = weights[0].new_zeros((0, weights[0].shape[1]))
    for weight in weights:
        directions = torch.cat([directions, round_plane(weight, directions, composition)])
    return composite_matrix(directions, composition), directions


@contextmanager
def single_thread() -> Iterator[None]:
    """Run a block with one intra-op thread, restoring the previous count.

    The regressor's steps are tiny matmuls ((B*N, D) x (D, 2)); with 2+ threads they spend more time handing work
    between threads than computing (measured 8x slower per step on a busy 2-core machine).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def fit_probe(tokens: torch.Tensor, cfg: RasaConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Train one position regressor on (M, h, w, D) tokens; returns its (2, D) weight.

    AdamW (lr ``cfg.lr``, no weight decay) with a per-step cosine schedule over ``cfg.epochs`` passes (at least
    ``cfg.min_steps`` steps) of image batches of ``cfg.batch_size``.
    """
    m, h, w, d = tokens.shape
    target = position_targets(h, w)  # (N, 2), the same for every image
    probe = nn.Linear(d, 2, bias=False)
    with torch.no_grad():  # a fresh default (Kaiming-uniform) init, drawn from the caller's generator
        bound = 1 / math.sqrt(d)
        probe.weight.copy_(torch.rand(2, d, generator=generator) * 2 * bound - bound)
    opt = torch.optim.AdamW(probe.parameters(), lr=cfg.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(m / cfg.batch_size)
    # a small fitting set gives few steps per epoch: train at least min_steps so the probe converges and a
    # near-chance MSE means "no signal left", not "regressor undertrained"
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    flat = tokens.reshape(m, h * w, d)
    with single_thread():
        _train_probe(probe, opt, sched, flat, target, epochs, cfg.batch_size, generator)
    return probe.weight.detach().clone()


def _train_probe(probe: nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                 flat: torch.Tensor, target: torch.Tensor, epochs: int, batch_size: int,
                 generator: torch.Generator | None) -> None:
    m = flat.shape[0]
    for _ in range(epochs):
        order = torch.randperm(m, generator=generator)
        for start in range(0, m, batch_size):
            x = flat[order[start : start + batch_size]].float()
            loss = F.mse_loss(torch.sigmoid(probe(x)), target.expand(x.shape[0], -1, -1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


@torch.no_grad()
def probe_mse(weight: torch.Tensor, tokens: torch.Tensor) -> float:
    """MSE of a (2, D) regressor on (M, h, w, D) tokens against their grid positions."""
    m, h, w, d = tokens.shape
    pred = torch.sigmoid(tokens.reshape(m, h * w, d).float() @ weight.t())
    return float(F.mse_loss(pred, position_targets(h, w).expand(m, -1, -1)))


def position_probe(train: torch.Tensor, test: torch.Tensor, cfg: RasaConfig, seed: int = 0) -> dict[str, float]:
    """The RASA position probe as an evaluation: a fresh regressor fitted on ``train``, MSE on ``test`` tokens.

    Returns ``{"mse", "chance"}``; ``mse`` near ``chance`` means no linear absolute-position signal is left.
    """
    _check_tokens(train, "train")
    _check_tokens(test, "test")
    gen = torch.Generator().manual_seed(seed)
    h, w = test.shape[1:3]
    return {"mse": probe_mse(fit_probe(train, cfg, gen), test), "chance": chance_mse(h, w)}


def _check_tokens(tokens: torch.Tensor, name: str) -> None:
    if tokens.ndim != 4:
        raise ValueError(f"RASA {name} tokens must be (images, h, w, D); got shape {tuple(tokens.shape)}")
    if tokens.shape[0] == 0:
        raise ValueError(f"RASA {name} tokens are empty: no images to fit or score on")
    if tokens.shape[1] < 2 or tokens.shape[2] < 2:
        raise ValueError(f"RASA needs a patch grid of at least 2x2; got {tuple(tokens.shape[1:3])}")


def fit_rasa(train: torch.Tensor, test: torch.Tensor, cfg: RasaConfig, seed: int = 0) -> RasaResult:
    """Fit ``cfg.rounds`` RASA rounds on (M, h, w, D) train tokens, scoring each on held-out test tokens.

    Round t's ``mse_before`` is its own regressor's held-out MSE; its ``mse_after`` is the held-out MSE of the next
    fresh regressor on the projected features (one extra regressor is fitted after the last round).

    Returns:
        A ``RasaResult`` with the composite ``(D, D)`` matrix, ``(2 * rounds, D)`` directions and per-round MSEs.
    """
    _check_tokens(train, "train")
    _check_tokens(test, "test")
    if train.shape[1:] != test.shape[1:]:
        raise ValueError(f"RASA train/test token grids differ: {tuple(train.shape[1:])} vs {tuple(test.shape[1:])}")
    gen = torch.Generator().manual_seed(seed)
    x_train, x_test = train.float(), test.float()
    basis = x_train.new_zeros((0, train.shape[-1]))
    before: list[float] = []
    for _ in range(cfg.rounds):
        weight = fit_probe(x_train, cfg, gen)
        before.append(probe_mse(weight, x_test))
        plane = round_plane(weight, basis, cfg.composition)
        basis = torch.cat([basis, plane])
        x_train, x_test = project_out(x_train, plane), project_out(x_test, plane)
    final = probe_mse(fit_probe(x_train, cfg, gen), x_test)
    after = [*before[1:], final]
    rounds = [RasaRound(i + 1, b, a) for i, (b, a) in enumerate(zip(before, after))]
    h, w = train.shape[1:3]
    return RasaResult(matrix=composite_matrix(basis, cfg.composition), directions=basis, rounds=rounds,
                      chance=chance_mse(h, w), grid=(h, w), composition=cfg.composition)

"""KoLeo regulariser: spread features by penalising close nearest neighbours in the batch.

Sablayrolles et al., "Spreading vectors for similarity search" (arXiv 1806.03198); reference
``dinov2/loss/koleo_loss.py`` and ``lightly/loss/koleo_loss.py``. Franca applies it with weight 0.1 to the
L2-normalised full-dimension backbone CLS of each global crop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """-mean_i log(min_{j != i} ||x_i - x_j|| + eps) over L2-normalised rows.

    Args:
        features: (batch_size, dim); needs batch_size >= 2.
    """
    if features.shape[0] < 2:
        raise ValueError(f"KoLeo needs at least 2 samples per crop, got {features.shape[0]}")
    x = F.normalize(features.float(), dim=-1, eps=eps)
    with torch.no_grad():
        sims = x @ x.t()
        sims.fill_diagonal_(-2.0)
        nn_index = sims.argmax(dim=1)  # nearest neighbour = highest cosine on the unit sphere
    distances = (x - x[nn_index]).norm(dim=-1)
    return -torch.log(distances + eps).mean()

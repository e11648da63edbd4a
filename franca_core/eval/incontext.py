"""In-context semantic segmentation with a memory bank of labelled patches (HummingBird-style).

Reference: Balazevic et al., "Towards In-context Scene Understanding" (HummingBird, arXiv 2306.01667) and the
open re-implementation ``vpariza/open-hummingbird-eval``; Franca (arXiv 2507.14137) "In-context segmentation".
The memory bank holds (patch token, patch label) pairs of the TRAIN images, a patch's label being its mask's class
at the patch centre (patches on ignored pixels are left out), subsampled to ``bank_size``. Each query patch takes
its k = 30 most cosine-similar bank patches; their one-hot labels are averaged with softmax(similarity / T)
weights; the class distribution is upsampled (bilinear) to the mask grid and its argmax is the prediction.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from franca_core.eval.miou import confusion, miou


def patch_labels(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(n, h, w) class of each patch: the mask (n, gh, gw) sampled at the patch centres (nearest)."""
    return F.interpolate(masks[:, None].float(), size=grid, mode="nearest")[:, 0].long()


def build_bank(patch: torch.Tensor, masks: torch.Tensor, ignore_index: int = 255, bank_size: int = 20_000,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised (m, D) bank tokens and (m,) labels from (n, h, w, D) tokens and (n, gh, gw) masks."""
    labels = patch_labels(masks, (patch.shape[1], patch.shape[2])).flatten()
    tokens = patch.reshape(-1, patch.shape[-1])
    keep = (labels != ignore_index).nonzero().flatten()
    if keep.numel() == 0:
        raise ValueError("in-context memory bank is empty: every training patch falls on an ignored pixel")
    gen = torch.Generator().manual_seed(seed)
    keep = keep[torch.randperm(keep.numel(), generator=gen)[:bank_size]]
    return F.normalize(tokens[keep].float(), dim=-1), labels[keep]


@torch.no_grad()
def incontext_segment(bank: torch.Tensor, bank_labels: torch.Tensor, query: torch.Tensor, n_classes: int,
                      size: tuple[int, int], k: int = 30, temperature: float = 0.02,
                      chunk: int = 8) -> torch.Tensor:
    """Predicted class maps (n, gh, gw) for (n, h, w, D) query tokens."""
    n, h, w, d = query.shape
    k = min(k, bank.shape[0])
    onehot = F.one_hot(bank_labels, n_classes).float()  # (m, C)
    preds = []
    for start in range(0, n, chunk):
        q = F.normalize(query[start : start + chunk].reshape(-1, d).float(), dim=-1)
        sims, idx = (q @ bank.t()).topk(k, dim=-1)
        weights = torch.softmax(sims / temperature, dim=-1)
        probs = (weights[..., None] * onehot[idx]).sum(dim=1)  # (b*h*w, C)
        probs = probs.reshape(-1, h, w, n_classes).permute(0, 3, 1, 2)
        probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
        preds.append(probs.argmax(dim=1))
    return torch.cat(preds)


def incontext_miou(train_patch: torch.Tensor, train_masks: torch.Tensor, test_patch: torch.Tensor,
                   test_masks: torch.Tensor, n_classes: int, ignore_index: int = 255, k: int = 30,
                   temperature: float = 0.02, bank_size: int = 20_000, seed: int = 0,
                   keep: int = 0) -> dict[str, Any]:
    """mIoU of in-context segmentation of the test images with a bank of the train images.

    Returns:
        ``{"miou": float, "predictions": (keep, gh, gw) int64}``.
    """
    for name, p, m in (("train", train_patch, train_masks), ("test", test_patch, test_masks)):
        if p.shape[0] == 0:
            raise ValueError(f"in-context segmentation needs {name} images")
        if m.ndim != 3 or m.shape[0] != p.shape[0]:
            raise ValueError(f"in-context segmentation needs one {name} mask per image: {tuple(m.shape)}")
    bank, labels = build_bank(train_patch, train_masks, ignore_index, bank_size, seed)
    if int(labels.max()) >= n_classes:
        raise ValueError(f"mask class {int(labels.max())} is outside [0, {n_classes})")
    size = (test_masks.shape[1], test_masks.shape[2])
    pred = incontext_segment(bank, labels, test_patch, n_classes, size, k, temperature)
    conf = confusion(pred, test_masks, n_classes, n_classes, ignore_index)
    return {"miou": miou(conf), "predictions": pred[:keep]}

from __future__ import annotations

import numpy as np
import torch

from franca_core.config import load_config
from franca_core.data.collate import MultiCropCollate
from franca_core.data.multicrop import MultiCropAugmentation
from franca_core.data.synthetic import SHAPES, iter_images, render_image


def test_multicrop__shapes_and_normalisation() -> None:
    crops = load_config("tiny").train.crops
    image, _, _ = render_image(np.random.default_rng(0), size=80)
    out = MultiCropAugmentation(crops)(image)
    g, loc = crops.global_size, crops.local_size
    assert [t.shape for t in out["global"]] == [(3, g, g)] * 2
    assert len(out["local"]) == crops.n_local and out["local"][0].shape == (3, loc, loc)
    assert out["global"][0].dtype == torch.float32 and out["global"][0].min() < 0  # mean-subtracted


def test_multicrop_collate__crop_major_layout_and_masks() -> None:
    cfg = load_config("tiny").train
    aug = MultiCropAugmentation(cfg.crops)
    samples = [aug(im) for im, _, _ in iter_images(6, seed=1, size=64)]
    batch = MultiCropCollate(cfg.masking, cfg.model.patch_size, torch.Generator().manual_seed(0))(samples)
    g, loc = cfg.crops.global_size, cfg.crops.local_size
    assert batch["global_crops"].shape == (12, 3, g, g)
    assert batch["local_crops"].shape == (6 * cfg.crops.n_local, 3, loc, loc)
    assert torch.equal(batch["global_crops"][6 + 2], samples[2]["global"][1])  # crop k of sample i at k*B + i
    assert batch["masks"].shape == (12, (g // cfg.model.patch_size) ** 2) and int((batch["masks"].any(1)).sum()) == 6


def test_synthetic__deterministic_and_labelled() -> None:
    a = list(iter_images(16, seed=5, size=48))
    b = list(iter_images(16, seed=5, size=48))
    assert all(np.array_equal(np.asarray(x[0]), np.asarray(y[0])) for x, y in zip(a, b))
    assert sorted({lab for _, _, lab in a}) == list(range(len(SHAPES)))
    img, mask, label = a[3]
    assert set(np.unique(mask)) <= {0, label + 1} and (mask > 0).mean() > 0.02

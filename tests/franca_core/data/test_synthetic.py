"""The generated images of ``franca train``: deterministic, balanced labels, and (textures) no colour shortcut."""

from __future__ import annotations

import numpy as np
import pytest

from franca_core.data.synthetic import SHAPES, STYLES, TEXTURES, iter_images


@pytest.mark.parametrize("style", STYLES)
def test_iter_images__same_seed_same_images_and_balanced_labels(style: str) -> None:
    a, b = list(iter_images(32, seed=3, size=32, style=style)), list(iter_images(32, seed=3, size=32, style=style))
    assert all(np.array_equal(np.asarray(x[0]), np.asarray(y[0])) for x, y in zip(a, b))
    n_classes = len(TEXTURES) if style == "textures" else len(SHAPES)
    assert sorted({label for _, _, label in a}) == list(range(n_classes))
    assert all(im.size == (32, 32) and mask.shape == (32, 32) for im, mask, _ in a)


def test_textures__mean_chromaticity_does_not_give_the_class() -> None:
    # Nearest-centroid on an image's mean chromaticity (RGB / (R + G + B)) must stay near chance (1/8): the class is
    # the pattern, not the colour. (Mean brightness does carry some of it: the patterns cover different fractions.)
    samples = list(iter_images(800, seed=0, size=32, style="textures"))
    x = np.stack([np.asarray(im, np.float32).mean(axis=(0, 1)) for im, _, _ in samples])
    x = x / x.sum(axis=1, keepdims=True)
    y = np.array([label for _, _, label in samples])
    train, test = slice(0, 600), slice(600, None)
    centroids = np.stack([x[train][y[train] == c].mean(0) for c in range(len(TEXTURES))])
    pred = np.argmin(((x[test][:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred == y[test]).mean() < 0.25


def test_iter_images__unknown_style_names_it() -> None:
    with pytest.raises(ValueError, match="'stripes'"):
        next(iter_images(1, style="stripes"))

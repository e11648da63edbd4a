"""The generated corpus in the configured style (``data.synthetic.style``): what the demo pretrains on (issue 21)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from franca_core.config import SyntheticSourceConfig
from franca_core.data.corpus import synthetic_corpus
from franca_core.data.synthetic import SHAPES, TEXTURES, render_image


def test_synthetic_corpus__textures_style_serves_texture_classes() -> None:
    cfg = SyntheticSourceConfig(n_images=120, image_size=32, seed=3, style="textures")
    corpus = synthetic_corpus(cfg)
    rows = [r for r in corpus.annotations.to_pylist() if r["fault"] == "unique"]
    assert {r["label"] for r in rows} == set(range(len(TEXTURES)))
    assert {r["label_name"] for r in rows} == set(TEXTURES)
    for r in rows:  # a texture fills the image: its mask is the class everywhere, no background
        mask = np.asarray(Image.open(io.BytesIO(r["mask"])))
        assert mask.shape == (32, 32) and (mask == r["label"] + 1).all()
    captions = corpus.metadata.column("caption").to_pylist()
    assert any(name in c for c in captions for name in TEXTURES)
    assert not any(f" {name} " in c for c in captions for name in SHAPES if name not in TEXTURES)


def test_synthetic_corpus__objects_style_renders_what_it_always_did() -> None:
    cfg = SyntheticSourceConfig(n_images=60, image_size=32, seed=4, bomb_count=0)
    corpus = synthetic_corpus(cfg)
    first = next(r for r in corpus.annotations.to_pylist() if r["fault"] == "unique")
    assert first["label_name"] in SHAPES
    # the first unique image is the first drawn from the seed, with the default ("objects") renderer
    img, mask, label = render_image(np.random.default_rng(4), 32, label=0)
    rows = {r["sample_id"]: r for r in corpus.annotations.to_pylist()}
    zero = [sid for sid, r in rows.items() if r["fault"] == "unique" and r["label"] == 0]
    masks = [np.asarray(Image.open(io.BytesIO(rows[sid]["mask"]))) for sid in zero]
    assert any((m == mask).all() for m in masks) and label == 0

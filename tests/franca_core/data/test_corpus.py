"""The generated LAION-style corpus (franca_core/data/corpus.py): layout, planted faults, determinism."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from franca_core.config import SyntheticSourceConfig
from franca_core.data.corpus import PLACEHOLDER, image_set_corpus, jpeg, synthetic_corpus
from franca_core.data.laion import LAION_COLUMNS
from franca_core.data.synthetic import render_image

CFG = SyntheticSourceConfig(n_images=200, image_size=48, seed=1)


@pytest.fixture(scope="module")
def corpus():
    return synthetic_corpus(CFG)


def test_synthetic_corpus__laion_layout_and_planted_counts(corpus) -> None:
    assert tuple(corpus.metadata.column_names) == LAION_COLUMNS
    faults = Counter(corpus.annotations.column("fault").to_pylist())
    assert faults == {"unique": 175, "exact_duplicate": 6, "near_duplicate": 6, "dead_url": 4, "filtered": 4,
                      "corrupt": 2, "non_image": 1, "decompression_bomb": 2}
    urls = corpus.metadata.column("url").to_pylist()
    assert all(u.startswith(PLACEHOLDER) for u in urls) and len(set(urls)) == 200
    served = {u[len(PLACEHOLDER):] for u in urls} & set(corpus.files)
    assert len(served) == 200 - faults["dead_url"]  # dead URLs have no file behind them


def test_synthetic_corpus__duplicates_point_at_their_source(corpus) -> None:
    rows = {r["sample_id"]: r for r in corpus.annotations.to_pylist()}
    files = {r["sample_id"]: corpus.files.get(r["url"][len(PLACEHOLDER):]) for r in corpus.metadata.to_pylist()}
    for sid, row in rows.items():
        if row["fault"] == "exact_duplicate":
            assert files[sid] == files[row["duplicate_of"]]
        if row["fault"] in ("exact_duplicate", "near_duplicate"):
            assert rows[row["duplicate_of"]]["fault"] == "unique" and row["label"] == rows[row["duplicate_of"]]["label"]
    labelled = [r for r in rows.values() if r["fault"] == "unique"]
    mask = np.asarray(Image.open(io.BytesIO(labelled[0]["mask"])))
    assert set(np.unique(mask)) <= {0, labelled[0]["label"] + 1}  # masks kept aside: 0 background, label + 1 object


def test_synthetic_corpus__same_seed_same_corpus(corpus) -> None:
    again = synthetic_corpus(CFG)
    assert again.metadata.equals(corpus.metadata) and again.files == corpus.files
    assert not synthetic_corpus(CFG.model_copy(update={"seed": 2})).metadata.equals(corpus.metadata)


def test_synthetic_corpus__too_small_for_its_faults_raises() -> None:
    with pytest.raises(ValueError, match="too small"):
        synthetic_corpus(SyntheticSourceConfig(n_images=4, exact_dup_rate=0.5, near_dup_rate=0.5))


def test_image_set_corpus__serves_images_unchanged_with_label_captions() -> None:
    img = jpeg(render_image(np.random.default_rng(0), 32)[0])
    c = image_set_corpus([("train/a/1", img, 3, "zebra"), ("train/b/2", img, 1, "ant")])
    assert list(c.files.values()) == [img, img]
    assert "zebra" in c.metadata.column("caption")[0].as_py()
    assert c.annotations.column("origin").to_pylist() == ["train/a/1", "train/b/2"]

"""Keep / drop decisions on a planted corpus (franca_core/dedup/near_dup.py), without HTTP."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from franca_core.config import DedupConfig, SyntheticSourceConfig
from franca_core.data.corpus import jpeg, score_dedup, synthetic_corpus
from franca_core.data.synthetic import render_image
from franca_core.dedup.hashing import hash_images
from franca_core.dedup.near_dup import CONTAMINATED, EXACT, NEAR, deduplicate


def as_downloaded(data: bytes, long_side: int = 64) -> bytes | None:
    """What img2dataset makes of a payload: OpenCV decode, long side <= ``long_side`` (INTER_AREA), JPEG q95."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        return None
    h, w = img.shape[:2]
    if max(h, w) > long_side:
        s = long_side / max(h, w)
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def _run(ids: list[str], blobs: list[bytes], cfg: DedupConfig = DedupConfig(), **eval_kw: np.ndarray):
    h = hash_images(blobs)
    return deduplicate(ids, h.content_hash, h.phash, h.signature, h.width * h.height, cfg, **eval_kw)


@pytest.fixture(scope="module")
def corpus_run() -> tuple[dict[str, float], dict[str, bool]]:
    corpus = synthetic_corpus(SyntheticSourceConfig(n_images=1000, image_size=64, seed=3))
    meta = corpus.metadata.to_pylist()
    ids, blobs = [], []
    for row in meta:
        body = corpus.files.get(row["url"].split("/", 3)[-1])
        small = as_downloaded(body) if body is not None and row["width"] >= 32 and row["height"] * 3 >= row["width"] \
            else None
        if small is not None and body[:4] != b"\x89PNG":  # the stage drops bombs before decoding
            ids.append(row["sample_id"])
            blobs.append(small)
    decisions = _run(ids, blobs)
    kept = dict(zip(ids, decisions.kept.tolist()))
    return score_dedup(corpus.annotations, kept), kept


def test_deduplicate__planted_exact_and_near_duplicates_found(corpus_run) -> None:
    score, _ = corpus_run
    assert score["exact_duplicate_planted"] == 30 and score["near_duplicate_planted"] == 30
    assert score["exact_duplicate_recall"] == 1.0, score
    assert score["near_duplicate_recall"] >= 0.95, score


def test_deduplicate__few_unique_images_dropped(corpus_run) -> None:
    score, _ = corpus_run
    assert score["unique"] > 800
    assert score["unique_false_drop_rate"] <= 0.01, score


def test_deduplicate__keeps_the_larger_copy_and_ignores_input_order() -> None:
    img, _, _ = render_image(np.random.default_rng(5), 64)
    other, _, _ = render_image(np.random.default_rng(6), 64)
    small = jpeg(img.resize((40, 40), Image.BICUBIC), 90)
    ids, blobs = ["a-small", "b-large", "c-other", "d-exact"], [small, jpeg(img), jpeg(other), jpeg(img)]
    d = _run(ids, blobs)
    assert d.kept.tolist() == [False, True, True, False]
    assert d.reason == [NEAR, "", "", EXACT] and d.duplicate_of[0] == 1 and d.duplicate_of[3] == 1
    order = [2, 3, 0, 1]
    d2 = _run([ids[i] for i in order], [blobs[i] for i in order])
    assert {ids[i] for i, k in zip(order, d2.kept) if k} == {"b-large", "c-other"}


def test_deduplicate__drops_resized_and_reencoded_copies_of_eval_images() -> None:
    rng = np.random.default_rng(7)
    eval_imgs = [render_image(rng, 64)[0] for _ in range(30)]
    train = [render_image(rng, 64)[0] for _ in range(30)]
    copies = [jpeg(eval_imgs[0], 55), jpeg(eval_imgs[1].resize((90, 90), Image.BICUBIC)), jpeg(eval_imgs[2])]
    blobs = [as_downloaded(b) for b in [jpeg(t) for t in train] + copies]
    ev = hash_images([jpeg(e) for e in eval_imgs])
    d = _run([f"s{i:03d}" for i in range(len(blobs))], blobs, eval_phashes=ev.phash, eval_signatures=ev.signature)
    assert d.reason[-3:] == [CONTAMINATED] * 3 and d.duplicate_of[-3:].tolist() == [0, 1, 2]
    assert d.kept[:30].all()


def test_deduplicate__rejects_duplicate_sample_ids() -> None:
    blob = jpeg(render_image(np.random.default_rng(8), 32)[0])
    with pytest.raises(ValueError, match="not unique"):
        _run(["x", "x"], [blob, blob])


def test_as_downloaded__matches_pillow_view_of_size() -> None:
    big = jpeg(render_image(np.random.default_rng(9), 100)[0])
    assert Image.open(io.BytesIO(as_downloaded(big))).size == (64, 64)

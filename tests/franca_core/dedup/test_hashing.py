"""Fingerprints: content hash of pixels, DCT phash, Lab signature (franca_core/dedup/hashing.py)."""

from __future__ import annotations

import io

import numpy as np
import scipy.fft
from PIL import Image

from franca_core.data.corpus import bomb_png, jpeg
from franca_core.data.synthetic import render_image
from franca_core.dedup.hashing import content_hash, dct_matrix, decode_rgb, hamming, hash_images, phash_hex


def _png(img: Image.Image, level: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=level)
    return buf.getvalue()


def test_dct_matrix__matches_scipy_orthonormal_dct() -> None:
    x = np.random.default_rng(0).normal(size=32).astype(np.float32)
    np.testing.assert_allclose(dct_matrix(32) @ x, scipy.fft.dct(x, norm="ortho"), rtol=1e-4, atol=1e-5)


def test_content_hash__same_pixels_different_bytes_same_hash() -> None:
    img, _, _ = render_image(np.random.default_rng(0), 64)
    a, b = _png(img, 1), _png(img, 9)  # lossless: same pixels, different files
    assert a != b
    batch = hash_images([a, b])
    assert batch.content_hash[0] == batch.content_hash[1]
    assert batch.content_hash[0] == content_hash(np.asarray(img))  # the hash is of the RGB pixels as Pillow sees them


def test_content_hash__transposed_flat_images_differ() -> None:
    # same flattened bytes, different shapes: the shape prefix keeps them apart
    assert content_hash(np.zeros((2, 8, 3), np.uint8)) != content_hash(np.zeros((8, 2, 3), np.uint8))


def test_hash_images__reencoded_copy_close_unrelated_far() -> None:
    rng = np.random.default_rng(1)
    img, _, _ = render_image(rng, 64)
    other, _, _ = render_image(rng, 64)
    batch = hash_images([jpeg(img, 90), jpeg(img, 50), jpeg(other, 90)])
    assert batch.phash.shape == (3, 8) and batch.signature.shape == (3, 48)
    assert hamming(batch.phash[0], batch.phash[1]) <= 6 < hamming(batch.phash[0], batch.phash[2])
    near = np.linalg.norm(batch.signature[0] - batch.signature[1])
    far = np.linalg.norm(batch.signature[0] - batch.signature[2])
    assert near < 0.05 < far, (near, far)
    assert len(phash_hex(batch.phash[0])) == 16


def test_hash_images__undecodable_reported_not_raised() -> None:
    good = jpeg(render_image(np.random.default_rng(2), 32)[0])
    batch = hash_images([good, b"<html>nope</html>", good[:30]])
    assert batch.error[0] == "" and batch.error[1] and batch.error[2]
    assert batch.content_hash[1] == "" and batch.width[0] == 32


def test_decode_rgb__bomb_rejected_from_header() -> None:
    data = bomb_png()
    try:
        decode_rgb(data, max_pixels=64_000_000)
    except ValueError as exc:
        assert "decompression bomb" in str(exc)
    else:
        raise AssertionError("a 144 Mpx PNG passed a 64 Mpx limit")


def test_hash_images__no_image_gives_empty_arrays_of_the_right_widths() -> None:
    batch = hash_images([], phash_size=8, signature_size=4)  # a shard whose URLs all failed has no image
    assert batch.phash.shape == (0, 8) and batch.signature.shape == (0, 48) and len(batch) == 0

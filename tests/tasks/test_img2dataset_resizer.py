"""The download's resizer wrapper: the JPEG fast path gives img2dataset's own result, and falls back where it must."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from img2dataset.resizer import Resizer

from franca_core.dedup.quality import CORRUPT
from tasks.img2dataset_run import SniffingResizer


def jpeg(size: tuple[int, int], seed: int = 0) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def resizer(**kwargs: object) -> Resizer:
    args = dict(image_size=64, resize_mode="keep_ratio_largest", resize_only_if_bigger=True, skip_reencode=True)
    return Resizer(**{**args, **kwargs})


@pytest.mark.parametrize("size", [(64, 48), (32, 32), (100, 80)])
def test_fast_path__same_result_as_img2dataset(size: tuple[int, int]) -> None:
    data = jpeg(size)
    wrapped = SniffingResizer(resizer(), 10**8)
    assert wrapped.fast_jpeg
    assert wrapped(io.BytesIO(data)) == resizer()(io.BytesIO(data))
    kept = size[0] <= 64 and size[1] <= 64
    assert (wrapped(io.BytesIO(data))[0] == data) is kept  # within the limit: byte for byte; above: resized


def test_fast_path__corrupt_jpeg_is_counted_as_corrupt() -> None:
    data = jpeg((48, 48))
    broken = data[:200] + bytes(len(data) - 200)  # header intact, entropy-coded data zeroed
    out = SniffingResizer(resizer(), 10**8)(io.BytesIO(broken))
    if out[-1] is not None:  # OpenCV may also return a (grey) partial image, as img2dataset would keep
        assert out[-1].startswith(f"{CORRUPT}:")
    assert out[:-1] == tuple(x for x in resizer()(io.BytesIO(broken))[:-1])


def test_fast_path__off_when_the_resizer_would_do_more() -> None:
    assert not SniffingResizer(resizer(skip_reencode=False), 10**8).fast_jpeg
    assert not SniffingResizer(resizer(min_image_size=16), 10**8).fast_jpeg
    assert not SniffingResizer(resizer(resize_mode="center_crop"), 10**8).fast_jpeg

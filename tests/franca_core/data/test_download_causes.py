"""Payload classification and img2dataset error -> cause mapping (franca_core/data/download_causes.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from franca_core.data.corpus import bomb_png, corrupt, html_page, jpeg
from franca_core.data.download_causes import (
    BOMB,
    CORRUPT,
    DEAD_URL,
    HTTP_ERROR,
    NETWORK_ERROR,
    NON_IMAGE,
    OTHER,
    SUCCESS,
    classify_payload,
    download_cause,
    read_header,
)
from franca_core.data.synthetic import render_image


def test_classify_payload__each_planted_fault() -> None:
    rng = np.random.default_rng(0)
    good = jpeg(render_image(rng, 32)[0])
    assert classify_payload(good, 10**6) is None
    assert classify_payload(html_page(rng), 10**6)[0] == NON_IMAGE
    assert classify_payload(b"", 10**6)[0] == NON_IMAGE
    assert classify_payload(corrupt(good, rng), 10**6)[0] == CORRUPT
    assert classify_payload(bomb_png(), 64_000_000)[0] == BOMB
    assert classify_payload(good, 100)[0] == BOMB  # 32x32 over a 100-pixel limit


@pytest.mark.parametrize(("status", "message", "cause"), [
    ("success", None, SUCCESS),
    ("failed_to_download", "HTTP Error 404: Not Found", DEAD_URL),
    ("failed_to_download", "HTTP Error 410: Gone", DEAD_URL),
    ("failed_to_download", "HTTP Error 503: Service Unavailable", HTTP_ERROR),
    ("failed_to_download", "<urlopen error [Errno 111] Connection refused>", NETWORK_ERROR),
    ("failed_to_download", "The read operation timed out", NETWORK_ERROR),
    ("failed_to_resize", "non_image: not an image: starts with '<!DOCTYPE'", NON_IMAGE),
    ("failed_to_resize", "decompression_bomb: 12000x12000 pixels exceeds 64000000", BOMB),
    ("failed_to_resize", "corrupt: Image decoding error", CORRUPT),
    ("failed_to_resize", "Image decoding error", CORRUPT),
    ("failed_to_resize", "something new", OTHER),
])
def test_download_cause__img2dataset_messages(status: str, message: str | None, cause: str) -> None:
    assert download_cause(status, message) == cause


@pytest.mark.parametrize("fmt", ["JPEG", "JPEG-progressive", "PNG", "GIF", "WEBP", "BMP"])
def test_read_header__same_size_as_pillow(fmt: str) -> None:
    img = render_image(np.random.default_rng(1), 50)[0].crop((0, 0, 50, 21))
    buf = io.BytesIO()
    img.save(buf, fmt.split("-")[0], **({"progressive": True} if "progressive" in fmt else {}))
    assert read_header(buf.getvalue()) == Image.open(io.BytesIO(buf.getvalue())).size == (50, 21)

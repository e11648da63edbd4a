"""Payload classification and img2dataset error -> cause mapping (franca_core/data/download_causes.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from franca_core.data.corpus import bomb_png, corrupt, html_page, jpeg
from franca_core.data.download_causes import (
    BOMB,
    CAUSES,
    CORRUPT,
    DEAD_URL,
    DEADLINE,
    HTTP_ERROR,
    NETWORK_ERROR,
    NON_IMAGE,
    OPTED_OUT,
    OTHER,
    REFUSED_HOST,
    REFUSED_SCHEME,
    SUCCESS,
    TOO_LARGE,
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


def test_classify_payload__message_never_carries_the_payload() -> None:
    # The message lands in samples.parquet and MLflow: a non-image body (a served secret, a private page) stays out.
    secret = b"AWS_SECRET_ACCESS_KEY=abc/def+ghi"
    cause, message = classify_payload(secret, 10**6)
    assert cause == NON_IMAGE and "AWS" not in message and "abc" not in message


def test_causes__refusals_are_causes_of_their_own() -> None:
    refusals = (REFUSED_SCHEME, REFUSED_HOST, TOO_LARGE, DEADLINE, OPTED_OUT)
    assert set(refusals) <= set(CAUSES) and len(set(CAUSES)) == len(CAUSES) and CAUSES[-1] == OTHER


@pytest.mark.parametrize(("status", "message", "cause"), [
    ("success", None, SUCCESS),
    ("failed_to_download", "HTTP Error 404: Not Found", DEAD_URL),
    ("failed_to_download", "HTTP Error 410: Gone", DEAD_URL),
    ("failed_to_download", "HTTP Error 503: Service Unavailable", HTTP_ERROR),
    ("failed_to_download", "<urlopen error [Errno 111] Connection refused>", NETWORK_ERROR),
    ("failed_to_download", "The read operation timed out", NETWORK_ERROR),
    ("failed_to_resize", "non_image: not an image: no image signature in its first bytes (12 bytes)", NON_IMAGE),
    ("failed_to_resize", "decompression_bomb: 12000x12000 pixels exceeds 64000000", BOMB),
    ("failed_to_resize", "corrupt: Image decoding error", CORRUPT),
    ("failed_to_resize", "Image decoding error", CORRUPT),
    ("failed_to_resize", "something new", OTHER),
    # the fetch policy's refusals (tasks/download_guard.py) and img2dataset's own opt-out text
    ("failed_to_download", "refused_scheme: file: scheme; only http and https are fetched", REFUSED_SCHEME),
    ("failed_to_download", "refused_host: h resolves to 127.0.0.2 (loopback); not on allow_hosts", REFUSED_HOST),
    ("failed_to_download", "too_large: Content-Length 5003 over max_bytes=4000", TOO_LARGE),
    ("failed_to_download", "deadline: not fetched within deadline_s=30", DEADLINE),
    ("failed_to_download", "opted_out: an X-Robots-Tag directive disallows this use", OPTED_OUT),
    ("failed_to_download", "Use of image disallowed by X-Robots-Tag directive", OPTED_OUT),
])
def test_download_cause__img2dataset_messages(status: str, message: str | None, cause: str) -> None:
    assert download_cause(status, message) == cause


@pytest.mark.parametrize("fmt", ["JPEG", "JPEG-progressive", "PNG", "GIF", "WEBP", "BMP"])
def test_read_header__same_size_as_pillow(fmt: str) -> None:
    img = render_image(np.random.default_rng(1), 50)[0].crop((0, 0, 50, 21))
    buf = io.BytesIO()
    img.save(buf, fmt.split("-")[0], **({"progressive": True} if "progressive" in fmt else {}))
    assert read_header(buf.getvalue()) == Image.open(io.BytesIO(buf.getvalue())).size == (50, 21)

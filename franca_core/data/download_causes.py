"""What went wrong with a URL: classify payloads before decoding and map download errors to causes.

The web serves HTML error pages with status 200, truncated or garbled files and decompression bombs (a few KB
that declare gigapixels). ``classify_payload`` reads only the header (Pillow's lazy ``Image.open``) so a bomb is
rejected before any pixel buffer is allocated; ``download_cause`` maps img2dataset's per-row
``(status, error_message)`` to the fixed set of ``CAUSES`` that every stage reports.
"""

from __future__ import annotations

import io
import re
import struct
import warnings

from PIL import Image, UnidentifiedImageError

SUCCESS = "success"
DEAD_URL = "dead_url"  # HTTP 404 / 410: the resource is gone
HTTP_ERROR = "http_error"  # other HTTP status errors (403, 5xx, ...)
NETWORK_ERROR = "network_error"  # refused, timed out, reset, DNS
CORRUPT = "corrupt"  # looks like an image (magic bytes) but does not decode
NON_IMAGE = "non_image"  # HTML, JSON, text, ... served where an image was expected
BOMB = "decompression_bomb"  # declares more pixels than allowed
# Refused by the download's fetch policy (tasks/download_guard.py), before or instead of a connection:
REFUSED_SCHEME = "refused_scheme"  # not http or https (file://, ftp://, data:, no scheme), on any redirect hop
REFUSED_HOST = "refused_host"  # resolves to a non-public address (loopback, private, link-local, ...), not allowed
TOO_LARGE = "too_large"  # body over data.download.max_bytes
DEADLINE = "deadline"  # not fetched within data.download.deadline_s (a dripping body, a slow redirect chain)
OPTED_OUT = "opted_out"  # an X-Robots-Tag directive (noai, noimageai, ...) disallows the use
OTHER = "other_error"
CAUSES: tuple[str, ...] = (SUCCESS, DEAD_URL, HTTP_ERROR, NETWORK_ERROR, CORRUPT, NON_IMAGE, BOMB, REFUSED_SCHEME,
                           REFUSED_HOST, TOO_LARGE, DEADLINE, OPTED_OUT, OTHER)

# Signatures of the formats a LAION crawl serves (JPEG, PNG, GIF, WebP, BMP, TIFF, AVIF/HEIF).
_MAGIC: tuple[bytes, ...] = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")


def looks_like_image(data: bytes) -> bool:
    """True when the first bytes carry an image format signature."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return True
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1"):
        return True
    return data.startswith(_MAGIC)


_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # JPEG start-of-frame markers (DHT, JPG, DAC excluded)


def _fast_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of a PNG or JPEG by reading its header directly; None when not found that way.

    The download's hot loop classifies every payload: this is ~10x cheaper than ``Image.open`` for the two formats
    that make up almost all of a crawl. Anything unusual goes to Pillow.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:3] != b"\xff\xd8\xff":
        return None
    i = 2
    while i + 9 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker in _SOF:
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return (width, height) if width and height else None
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def read_header(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from the header only; ``ValueError`` if the bytes are not an identifiable image."""
    if (size := _fast_size(data)) is not None:
        return size
    try:
        with warnings.catch_warnings():  # we compare the size ourselves; Pillow's bomb warning is noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return img.size
    except Image.DecompressionBombError as exc:  # > 2x Pillow's own limit: certainly a bomb
        raise ValueError(f"decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"unidentifiable image: {exc}") from exc


def classify_payload(data: bytes, max_pixels: int) -> tuple[str, str] | None:
    """``None`` when the bytes may be decoded, else ``(cause, message)`` with cause in ``CAUSES``.

    A ``None`` does not promise a decodable image (the body may be truncated); the decoder's failure is then a
    ``CORRUPT`` cause.
    """
    if not data:
        return NON_IMAGE, "empty body"
    try:
        width, height = read_header(data)
    except ValueError as exc:
        if str(exc).startswith("decompression bomb"):
            return BOMB, str(exc)
        if looks_like_image(data):
            return CORRUPT, f"undecodable image data ({len(data)} bytes)"
        # The payload's bytes never go into the message: it lands in samples.parquet and MLflow, and a non-image
        # may be anything (a served secret, a private page).
        return NON_IMAGE, f"not an image: no image signature in its first bytes ({len(data)} bytes)"
    if width * height > max_pixels:
        return BOMB, f"{width}x{height} pixels exceeds {max_pixels}"
    return None


_HTTP = re.compile(r"HTTP Error (\d{3})")
_NETWORK = ("timed out", "refused", "reset", "urlopen error", "Name or service", "Connection", "RemoteDisconnected")


def download_cause(status: str | None, error_message: str | None) -> str:
    """Map one img2dataset result row to a cause in ``CAUSES``.

    Messages starting with ``"<cause>:"`` are the ones our payload classifier raised inside img2dataset's
    resizer; the others are urllib's and OpenCV's wording as img2dataset 1.47 records them.
    """
    if status == "success":
        return SUCCESS
    message = error_message or ""
    prefix = message.split(":", 1)[0]
    if prefix in CAUSES:
        return prefix
    if (code := _HTTP.search(message)) is not None:
        return DEAD_URL if code.group(1) in ("404", "410") else HTTP_ERROR
    if any(token in message for token in _NETWORK):
        return NETWORK_ERROR
    if "decoding error" in message.lower():
        return CORRUPT
    if "image area too large" in message:
        return BOMB
    if "X-Robots-Tag" in message:  # img2dataset's own opt-out check
        return OPTED_OUT
    return OTHER

"""Per-image fingerprints: content hash of decoded pixels, perceptual hash, low-frequency colour signature.

- ``content_hash``: sha256 of the decoded RGB pixels (uint8, row-major ``(H, W, 3)``) preceded by ``b"HxWx3;"`` so
  that two flat images of transposed shapes do not collide. Identical bytes decode to identical pixels, so this
  finds exact duplicates however the file was named or re-served; unlike a hash of the file bytes it also ignores
  metadata (EXIF, ICC) changes.
- ``phash``: the DCT perceptual hash (Zauner, "Implementation and Benchmarking of Perceptual Image Hash
  Functions", 2010; the ``imagehash.phash`` recipe): luminance thumbnail of ``4 * hash_size`` pixels, 2-D DCT,
  the ``hash_size x hash_size`` lowest frequencies compared with their median -> ``hash_size**2`` bits.
- ``signature``: the ``size x size`` lowest 2-D DCT frequencies of each CIE-Lab channel of the same thumbnail,
  scaled to be resolution independent -> a ``(3 * size**2,)`` float vector (48-d by default). A 64-bit grey phash
  cannot tell apart many synthetic images that share a background (and real ones that share a layout), while
  colour + layout separates them; L2 distance on this vector is what the ANN near-duplicate search uses
  (see ``near_dup.py``), the phash is kept in the manifest as a compact, widely understood fingerprint.

Shapes: ``HashBatch.phash`` is ``(n, hash_size**2 // 8)`` uint8 (packed bits), ``HashBatch.signature`` is
``(n, 3 * size**2)`` float32.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from franca_core.data.download_causes import read_header


@lru_cache(maxsize=8)
def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix ``(n, n)``: ``dct_matrix(n) @ x`` is ``scipy.fft.dct(x, norm="ortho")``."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    mat = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    mat[0] /= np.sqrt(2.0)
    return mat.astype(np.float32)


def decode_rgb(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """Encoded image bytes -> ``(H, W, 3)`` uint8 RGB; ``ValueError`` if undecodable or over ``max_pixels``."""
    if max_pixels is not None:  # read the header first: never allocate a decompression bomb
        width, height = read_header(data)
        if width * height > max_pixels:
            raise ValueError(f"decompression bomb: {width}x{height} exceeds {max_pixels} pixels")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("undecodable image bytes")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def content_hash(rgb: np.ndarray) -> str:
    """sha256 hex of decoded pixels, shape-prefixed (see module docstring)."""
    h, w = rgb.shape[:2]
    digest = hashlib.sha256(f"{h}x{w}x3;".encode())
    digest.update(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def lab_thumbnail(rgb: np.ndarray, size: int = 32) -> np.ndarray:
    """``(size, size, 3)`` float32 CIE-Lab thumbnail with L/100 and a/128, b/128 (all roughly in [-1, 1])."""
    interp = cv2.INTER_AREA if min(rgb.shape[:2]) >= size else cv2.INTER_LINEAR
    small = cv2.resize(rgb, (size, size), interpolation=interp).astype(np.float32) / 255.0
    lab = cv2.cvtColor(small, cv2.COLOR_RGB2Lab)
    return lab * np.array([1 / 100, 1 / 128, 1 / 128], np.float32)


def low_frequencies(thumbs: np.ndarray, keep: int) -> np.ndarray:
    """2-D DCT of ``(n, T, T, C)`` thumbnails, top-left ``keep x keep`` block: ``(n, C, keep, keep)``, divided by T."""
    size = thumbs.shape[1]
    mat = dct_matrix(size)[:keep]  # (keep, T)
    chans = np.ascontiguousarray(np.moveaxis(thumbs, -1, 1))  # (n, C, T, T)
    return (mat @ chans @ mat.T) / size


def phash_bits(thumbs: np.ndarray, hash_size: int = 8) -> np.ndarray:
    """Packed perceptual-hash bits ``(n, hash_size**2 // 8)`` from the L channel of ``(n, T, T, 3)`` thumbnails."""
    coeffs = low_frequencies(thumbs[..., :1], hash_size).reshape(len(thumbs), hash_size**2)  # (0, -1) is ambiguous
    bits = coeffs > np.median(coeffs, axis=1, keepdims=True)
    return np.packbits(bits, axis=1)


def signature(thumbs: np.ndarray, size: int = 4) -> np.ndarray:
    """Low-frequency Lab signature ``(n, 3 * size**2)`` float32 of ``(n, T, T, 3)`` thumbnails."""
    return low_frequencies(thumbs, size).reshape(len(thumbs), thumbs.shape[-1] * size**2).astype(np.float32)


def phash_hex(bits: np.ndarray) -> str:
    """One packed phash row -> lower-case hex string (16 characters for 64 bits)."""
    return bytes(np.asarray(bits, np.uint8)).hex()


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance between packed bit rows (broadcasting over leading axes)."""
    return np.unpackbits(np.bitwise_xor(a, b), axis=-1).sum(axis=-1)


@dataclass
class HashBatch:
    """Fingerprints of ``n`` images; rows whose ``error`` is not empty hold zeros."""

    content_hash: list[str]
    phash: np.ndarray  # (n, hash_size**2 // 8) uint8
    signature: np.ndarray  # (n, 3 * size**2) float32
    width: np.ndarray  # (n,) int32
    height: np.ndarray  # (n,) int32
    error: list[str]

    def __len__(self) -> int:
        return len(self.content_hash)


def hash_images(blobs: Sequence[bytes], phash_size: int = 8, signature_size: int = 4,
                max_pixels: int | None = None) -> HashBatch:
    """Decode and fingerprint encoded images; an undecodable one is reported in ``error``, never raised.

    Args:
        blobs: encoded images (JPEG, PNG, WebP, ...).
        phash_size: side of the DCT block of the perceptual hash (``phash_size**2`` bits).
        signature_size: side of the DCT block per Lab channel of the signature.
        max_pixels: when set, headers are read first and larger images rejected (untrusted inputs).
    """
    n, thumb_size = len(blobs), 4 * max(phash_size, signature_size)
    thumbs = np.zeros((n, thumb_size, thumb_size, 3), np.float32)
    hashes, errors = [""] * n, [""] * n
    width, height = np.zeros(n, np.int32), np.zeros(n, np.int32)
    for i, data in enumerate(blobs):
        try:
            rgb = decode_rgb(data, max_pixels)
        except ValueError as exc:
            errors[i] = str(exc)
            continue
        hashes[i] = content_hash(rgb)
        height[i], width[i] = rgb.shape[:2]
        thumbs[i] = lab_thumbnail(rgb, thumb_size)
    return HashBatch(hashes, phash_bits(thumbs, phash_size), signature(thumbs, signature_size), width, height, errors)

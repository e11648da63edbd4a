"""``franca bench dedup``: fingerprint and dedup throughput, and how dedup time scales with n (JSON).

    franca bench dedup --n 100000            # fingerprint + dedup of n and n/4 generated 64 px images

``n`` distinct 64 px JPEGs (smooth random colour fields with texture, 3 % exact and 3 % near duplicates planted)
are fingerprinted in one process (decode, sha256 of pixels, phash, signature: ``images_per_s_per_core``; the hashes
alone on decoded pixels: ``hashes_per_s``) and deduplicated (exact + ANN near-duplicate search), for ``n`` and
``n / 4`` images. Goals: ``images_per_s_per_core`` >= 2000, ``time_ratio_100k_25k`` (time(n) / time(n/4)) <= 5.
"""

from __future__ import annotations

import argparse
import json
import time

import cv2
import numpy as np

from franca_cli.options import add_config_options, config_from_args
from franca_core.dedup.hashing import content_hash, hash_images, lab_thumbnail, phash_bits, signature
from franca_core.dedup.near_dup import deduplicate

HELP = "fingerprint + dedup images/s, and time(n) / time(n/4)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The config options (``dedup.*``), ``--n`` and ``--seed``."""
    add_config_options(parser)
    parser.add_argument("--n", type=int, default=100_000, help="images at the large size (the small one is n/4)")
    parser.add_argument("--seed", type=int, default=0)


def generated_jpegs(n: int, seed: int, size: int = 64) -> tuple[list[bytes], dict[str, int]]:
    """``n`` distinct JPEGs (smooth colour fields + texture) with 3 % exact and 3 % near duplicates planted."""
    rng = np.random.default_rng(seed)
    n_exact = n_near = int(0.03 * n)
    n_unique = n - n_exact - n_near
    blobs: list[bytes] = []
    images: list[np.ndarray] = []
    for start in range(0, n_unique, 1024):
        m = min(1024, n_unique - start)
        grids = rng.uniform(0, 255, (m, 5, 5, 3)).astype(np.float32)
        noise = rng.normal(0, 12, (m, size, size, 3)).astype(np.float32)
        for g, z in zip(grids, noise):
            img = np.clip(cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC) + z, 0, 255).astype(np.uint8)
            images.append(img)
            blobs.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())
    sources = rng.choice(n_unique, n_exact + n_near, replace=False)
    for k, src in enumerate(sources.tolist()):
        if k < n_exact:
            blobs.append(blobs[src])
            continue
        crop = int(rng.integers(1, 3))
        img = cv2.resize(images[src][crop:size - crop, crop:size - crop], (size, size), interpolation=cv2.INTER_AREA)
        blobs.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(50, 80))])[1].tobytes())
    return blobs, {"unique": n_unique, "exact": n_exact, "near": n_near}


def _run_dedup(blobs: list[bytes], args: argparse.Namespace) -> dict[str, float]:
    cfg = config_from_args(args).dedup
    t0 = time.perf_counter()
    h = hash_images(blobs, cfg.phash_size, cfg.signature_size)
    t1 = time.perf_counter()
    ids = [f"{i:08d}" for i in range(len(blobs))]
    d = deduplicate(ids, h.content_hash, h.phash, h.signature, h.width * h.height, cfg)
    t2 = time.perf_counter()
    return {"hash_s": t1 - t0, "dedup_s": t2 - t1, "total_s": t2 - t0, **d.counts()}


def _hashes_per_s(blobs: list[bytes], reps: int = 10_000) -> float:
    """Content hash + phash + signature on already decoded pixels (no JPEG decode)."""
    rgbs = [cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            for b in blobs[:reps]]
    start = time.perf_counter()
    thumbs = np.empty((len(rgbs), 32, 32, 3), np.float32)
    for i, rgb in enumerate(rgbs):
        content_hash(rgb)
        thumbs[i] = lab_thumbnail(rgb)
    phash_bits(thumbs)
    signature(thumbs)
    return len(rgbs) / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> int:
    """Print the dedup benchmark JSON."""
    cv2.setNumThreads(1)  # per-core figures: OpenCV must not spread one decode over several threads
    t = time.perf_counter()
    blobs, planted = generated_jpegs(args.n, args.seed)
    gen_s = time.perf_counter() - t
    small_blobs, _ = generated_jpegs(args.n // 4, args.seed + 1)
    small = _run_dedup(small_blobs, args)
    large = _run_dedup(blobs, args)
    print(json.dumps({
        "n": args.n, "n_small": args.n // 4, "image_size": 64, "generate_s": round(gen_s, 1),
        "images_per_s_per_core": round(args.n / large["hash_s"], 1), "hashes_per_s": round(_hashes_per_s(blobs), 1),
        "dedup_search_s": round(large["dedup_s"], 2), "time_small_s": round(small["total_s"], 2),
        "time_large_s": round(large["total_s"], 2),
        "time_ratio_100k_25k": round(large["total_s"] / small["total_s"], 3),
        "planted": planted, "found": {k: large[k] for k in ("exact_duplicate", "near_duplicate", "kept")},
        "goals": {"images_per_s_per_core": 2000, "time_ratio_100k_25k": 5}}, indent=1))
    return 0

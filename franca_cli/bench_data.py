"""``franca bench download`` and ``franca bench dedup``: data-stage throughput as JSON (figures, not timed tests).

    franca bench download --n 2000           # img2dataset vs a plain concurrent HTTP fetch of the same URLs
    franca bench dedup --n 100000            # fingerprint + dedup of n and n/4 generated 64 px images

download: a fault-free generated corpus is served on 127.0.0.1; the same URLs are fetched by a thread pool in a
child process (``data.download.threads`` threads, urllib, bytes only) before and after each of ``--repeats``
img2dataset runs through the download stage's runner (decode check, resize, webdataset shards).
``img2dataset_images_per_s`` is img2dataset's own rate (successes over its first shard start to last shard end, as its
speed logger reports it); ``img2dataset_wall_images_per_s`` adds the child process start-up. Each run's ratio is taken
against the raw fetches on either side of it; the figures printed are medians over runs (``runs`` lists them all).
Goal: ``ratio`` >= 0.7.

dedup: ``n`` distinct 64 px JPEGs (smooth random colour fields with texture, 3 % exact and 3 % near duplicates planted)
are fingerprinted in one process (decode, sha256 of pixels, phash, signature: ``images_per_s_per_core``; the hashes
alone on decoded pixels: ``hashes_per_s``) and deduplicated (exact + ANN near-duplicate search), for ``n`` and
``n / 4`` images. Goals: ``images_per_s_per_core`` >= 2000, ``time_ratio_100k_25k`` (time(n) / time(n/4)) <= 5.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from franca_cli.options import add_config_options, config_from_args
from franca_core.data.corpus import PLACEHOLDER, synthetic_corpus
from franca_core.dedup.hashing import content_hash, hash_images, lab_thumbnail, phash_bits, signature
from franca_core.dedup.near_dup import deduplicate


def register_bench(bench: argparse._SubParsersAction) -> None:
    """Add ``download`` and ``dedup`` to ``franca bench``."""
    dl = bench.add_parser("download", help="img2dataset images/s vs plain HTTP fetch of the same URLs")
    add_config_options(dl)
    dl.add_argument("--n", type=int, default=2000, help="images in the served corpus")
    dl.add_argument("--repeats", type=int, default=3, help="img2dataset runs, each between two raw fetches; "
                                                               "the figures are the medians")
    dl.set_defaults(func=bench_download)
    dd = bench.add_parser("dedup", help="fingerprint + dedup images/s, and time(n) / time(n/4)")
    add_config_options(dd)
    dd.add_argument("--n", type=int, default=100_000, help="images at the large size (the small one is n/4)")
    dd.add_argument("--seed", type=int, default=0)
    dd.set_defaults(func=bench_dedup)


# ------------------------------------------------------------------------------------------------- download
_FETCH = """
import sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
urls, threads = open(sys.argv[1]).read().split(), int(sys.argv[2])
def get(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return len(r.read())
start = time.perf_counter()
with ThreadPoolExecutor(threads) as pool:
    list(pool.map(get, urls))
print(time.perf_counter() - start)
"""


def _fetch_all(urls: list[str], threads: int, work: str) -> float:
    """Seconds for a child process to GET every URL with ``threads`` threads (bytes read, nothing decoded).

    A child process, like img2dataset's: a client in the server's process would share its GIL and look slower.
    """
    Path(work, "urls.txt").write_text("\n".join(urls))
    out = subprocess.run([sys.executable, "-c", _FETCH, f"{work}/urls.txt", str(threads)], check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_download(args: argparse.Namespace) -> int:
    """Print the download benchmark JSON."""
    from tasks.download import img2dataset_spec, run_img2dataset
    from tasks.url_server import serve_folder

    cfg = config_from_args(args)
    syn = cfg.data.synthetic.model_copy(update={
        "n_images": args.n, "exact_dup_rate": 0.0, "near_dup_rate": 0.0, "dead_url_rate": 0.0, "corrupt_rate": 0.0,
        "non_image_rate": 0.0, "filtered_rate": 0.0, "bomb_count": 0})
    dl = cfg.data.download
    corpus = synthetic_corpus(syn)
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="franca-bench-") as work:
        for rel, body in corpus.files.items():
            Path(work, rel).parent.mkdir(parents=True, exist_ok=True)
            Path(work, rel).write_bytes(body)
        with serve_folder(work) as server:
            urls = [u.replace(PLACEHOLDER, server.base_url) for u in corpus.metadata.column("url").to_pylist()]
            meta = corpus.metadata.select(["sample_id", "caption"]).append_column("url", pa.array(urls))
            pq.write_table(meta, f"{work}/urls.parquet")
            # Interleaved: raw, img2dataset, raw, img2dataset, ..., raw; each img2dataset run is compared with the
            # mean of the raw fetches just before and after it, so a slow spell of the machine hits both sides.
            raw = [_fetch_all(urls, dl.threads, work)]
            for r in range(args.repeats):
                out = f"{work}/shards-{r}"
                start = time.perf_counter()
                run_img2dataset(img2dataset_spec(dl, f"{work}/urls.parquet", out), work)
                wall = time.perf_counter() - start
                raw.append(_fetch_all(urls, dl.threads, work))
                stats = [json.loads(p.read_text()) for p in Path(out).glob("*_stats.json")]
                ok = sum(s["successes"] for s in stats)
                steady = max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats)
                raw_ips = len(urls) / statistics.mean(raw[-2:])
                runs.append({"img2dataset_images_per_s": round(ok / steady, 1),
                             "wall_images_per_s": round(ok / wall, 1), "raw_http_images_per_s": round(raw_ips, 1),
                             "ratio": round(ok / steady / raw_ips, 3), "successes": ok})
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(json.dumps({
        "images": len(urls), "image_size": syn.image_size, "threads": dl.threads, "processes": dl.processes,
        "cpus": os.cpu_count(), "repeats": args.repeats, "img2dataset_successes": min(r["successes"] for r in runs),
        "img2dataset_images_per_s": round(median["img2dataset_images_per_s"], 1),
        "img2dataset_wall_images_per_s": round(median["wall_images_per_s"], 1),
        "raw_http_images_per_s": round(median["raw_http_images_per_s"], 1), "ratio": round(median["ratio"], 3),
        "runs": runs, "goal_ratio": 0.7}, indent=1))
    return 0


# ---------------------------------------------------------------------------------------------------- dedup
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


def bench_dedup(args: argparse.Namespace) -> int:
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

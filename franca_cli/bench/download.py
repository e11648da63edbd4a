"""``franca bench download``: img2dataset images/s against a plain concurrent HTTP fetch of the same URLs (JSON).

    franca bench download --n 2000           # img2dataset vs a plain concurrent HTTP fetch of the same URLs

A fault-free generated corpus is served on 127.0.0.1; the same URLs are fetched by a thread pool in a child process
(``data.download.threads`` threads, urllib, bytes only) before and after each of ``--repeats`` img2dataset runs
through the download stage's runner (its fetch policy on, the server allow-listed as the stage does it; decode
check, resize, webdataset shards). ``img2dataset_images_per_s`` is img2dataset's own rate (successes over its first
shard start to last shard end, as its speed logger reports it); ``img2dataset_wall_images_per_s`` adds the child
process start-up. Each run's ratio is taken against the raw fetches on either side of it; the figures printed are
medians over runs (``runs`` lists them all). Goal: ``ratio`` >= 0.7.
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

import pyarrow as pa
import pyarrow.parquet as pq

from franca_cli.options import add_config_options, config_from_args
from franca_core.data.corpus import PLACEHOLDER, synthetic_corpus

HELP = "img2dataset images/s vs plain HTTP fetch of the same URLs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The config options (``data.*``), ``--n`` and ``--repeats``."""
    add_config_options(parser)
    parser.add_argument("--n", type=int, default=2000, help="images in the served corpus")
    parser.add_argument("--repeats", type=int, default=3, help="img2dataset runs, each between two raw fetches; "
                                                                   "the figures are the medians")

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


def run(args: argparse.Namespace) -> int:
    """Print the download benchmark JSON."""
    from tasks.download import img2dataset_spec, run_img2dataset
    from tasks.download_server import serve_folder

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
                run_img2dataset(img2dataset_spec(dl, f"{work}/urls.parquet", out, (server.host_port,)), work)
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



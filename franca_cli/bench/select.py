"""``franca bench select``: rows/s per core and peak memory of the select stage on LAION-scale metadata parts (JSON).

    franca bench select                              # 10 M, then 1 M generated rows in 10 parts
    franca bench select --rows 10000000              # one size
    franca bench select --rows 1000000 --parts 5 --no-ids   # no SAMPLE_ID column: ranks hash the URL (Re-LAION)

The metadata is generated in the LAION-400M / laion2B-en layout (``SAMPLE_ID, URL, TEXT, HEIGHT, WIDTH,
similarity, punsafe, pwatermark, LICENSE, NSFW``; snappy ``part-NNNNN.parquet`` files, row groups of up to 1 Mi
rows, 1 % of URLs listed twice, a few rows failing each filter) in a temporary folder. Then a child process runs
what the select stage runs (``tasks.select.select_parts`` over the folder, with ``target_count`` =
``--target-fraction`` of the rows, then ``subset.parquet`` written as the stage writes it), so the generator's
memory is not counted:

- ``rows_per_s_per_core``: rows / CPU seconds (user + system, ``resource.getrusage(RUSAGE_SELF)`` in the child,
  around select and the write, after the imports: a machine busy with other work slows the wall clock more
  than this);
  ``select_cpu_s`` and ``write_cpu_s`` split them;
- ``peak_rss_gb``: the child's peak resident memory (``VmHWM``: its interpreter and imports included; not
  ``ru_maxrss``, which exec carries over from the parent);
- ``wall_s`` and ``cores_used`` (CPU seconds / wall seconds; about 1: Parquet is decoded on one thread).

Goals: ``rows_per_s_per_core`` >= 2,000,000 and ``peak_rss_gb`` <= 1.5 at both sizes (the top-level figures are the
worst over the sizes run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HELP = "select rows/s per core and peak RSS on generated LAION metadata parts"
GOALS = {"rows_per_s_per_core": 2_000_000, "peak_rss_gb": 1.5}
_WORDS = pa.array("a photo of the cat dog red blue old new house car tree city beach sunset with on in at".split())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--rows`` (one or more sizes), ``--parts``, ``--target-fraction``, ``--no-ids`` and ``--seed``."""
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000_000, 1_000_000], help="metadata rows")
    parser.add_argument("--parts", type=int, default=10, help="Parquet parts the rows are split into")
    parser.add_argument("--target-fraction", type=float, default=0.1, help="data.select.target_count / rows")
    parser.add_argument("--no-ids", action="store_true", help="no SAMPLE_ID column (ranks hash the URL)")
    parser.add_argument("--seed", type=int, default=0)


def generated_part(start: int, n: int, total: int, seed: int, ids: bool = True) -> pa.Table:
    """Rows ``start .. start + n`` of a generated LAION-style table (vectorised; the same rows for any split)."""
    rng = np.random.default_rng([seed, start])
    index = np.arange(start, start + n)
    dup = rng.random(n) < 0.01  # 1 % repeat the URL of an earlier row
    url_id = np.where(dup, (index * 7919) % max(1, total), index)
    host = pc.cast(pa.array(url_id % 9973), pa.string())
    path = pc.cast(pa.array(url_id * 2654435761 % 10**12), pa.string())
    ext = pa.array(np.where(url_id % 5 == 0, ".png", ".jpg"))
    url = pc.binary_join_element_wise("https://img", host, ".example.com/images/", path, "/photo", ext, "")
    words = [_WORDS.take(pa.array(rng.integers(0, len(_WORDS), n))) for _ in range(5)]
    width = np.clip(rng.lognormal(6.2, 0.6, n), 8, 8000).astype(np.int64)  # median ~500 px, a few too small
    height = np.clip(width * rng.lognormal(-0.15, 0.35, n), 8, 8000).astype(np.int64)  # a few too elongated
    table = {"URL": url, "TEXT": pc.binary_join_element_wise(*words, " "), "HEIGHT": height, "WIDTH": width,
             "similarity": rng.uniform(0.27, 0.45, n), "punsafe": rng.beta(1, 12, n).astype(np.float32),
             "pwatermark": rng.beta(1, 5, n).astype(np.float32),
             "LICENSE": np.where(rng.random(n) < 0.9, "?", "https://creativecommons.org/licenses/by/4.0/"),
             "NSFW": np.array(["UNLIKELY", "UNSURE", "NSFW"])[np.searchsorted([0.97, 0.99], rng.random(n))]}
    return pa.table({"SAMPLE_ID": index * 3 + 1, **table} if ids else table)


def write_parts(folder: Path, rows: int, parts: int, seed: int, ids: bool) -> None:
    """``parts`` snappy Parquet files ``part-NNNNN.parquet`` holding ``rows`` generated rows, one row group each."""
    bounds = np.linspace(0, rows, parts + 1).astype(int)
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        schema = generated_part(0, 1, rows, seed, ids).schema
        with pq.ParquetWriter(folder / f"part-{i:05d}.parquet", schema, compression="snappy") as writer:
            for step in range(lo, hi, 1 << 20):  # generated in slices of at most 1 Mi rows (a row group each)
                writer.write_table(generated_part(step, min(1 << 20, hi - step), rows, seed, ids))


def peak_rss_gb() -> float:
    """This process's peak resident memory: ``VmHWM`` of /proc/self/status (Linux), else ``ru_maxrss``.

    ``ru_maxrss`` is not used on Linux: exec carries the parent's high-water mark into the child's (the process is
    vforked from the parent, which holds the generator's memory), so it would count the generator.
    """
    import resource

    status = Path("/proc/self/status")
    if status.exists():
        line = next(x for x in status.read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(folder: str, target: int) -> None:
    """The measured work, in its own process: select over the parts, write the subset, print the figures."""
    import resource
    import time

    import fsspec

    from franca_core.config import SelectConfig
    from tasks.common.tables import write_parquet
    from tasks.select import select_parts

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    pa.array(np.zeros(1))  # pyarrow imports pandas on its first pa.array (0.5 s, once per process): not select's work
    c0, t0 = cpu(), time.perf_counter()
    subset, stats = select_parts(folder, SelectConfig(target_count=target), {})
    c1 = cpu()
    write_parquet(subset, fsspec.filesystem("file"), f"{folder}/subset.parquet")  # as the stage writes it
    c2, t2 = cpu(), time.perf_counter()
    print(json.dumps({"cpu_s": round(c2 - c0, 2), "select_cpu_s": round(c1 - c0, 2), "write_cpu_s": round(c2 - c1, 2),
                      "wall_s": round(t2 - t0, 2), "peak_rss_gb": round(peak_rss_gb(), 3), "stats": stats}))


def measure(rows: int, parts: int, fraction: float, seed: int, ids: bool) -> dict[str, Any]:
    """Generate the parts, run ``child`` on them and return its figures."""
    with tempfile.TemporaryDirectory(prefix="franca-bench-select-") as tmp:
        write_parts(Path(tmp), rows, parts, seed, ids)
        target = max(1, int(rows * fraction))
        code = f"from franca_cli.bench.select import child; child({tmp!r}, {target})"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"the select child failed: {done.stderr[-2000:]}")
        out = json.loads(done.stdout.strip().splitlines()[-1])
    stats = out.pop("stats")
    cpu_s, wall_s = max(out["cpu_s"], 1e-3), max(out["wall_s"], 1e-3)
    return {"rows": rows, "parts": parts, "target_count": target, "ids": "SAMPLE_ID" if ids else "url",
            "rows_per_s_per_core": int(rows / cpu_s), "peak_rss_gb": out["peak_rss_gb"], "wall_s": out["wall_s"],
            "cpu_s": out["cpu_s"], "select_cpu_s": out["select_cpu_s"], "write_cpu_s": out["write_cpu_s"],
            "cores_used": round(cpu_s / wall_s, 2), "selected": stats["selected"],
            "filtered": stats["filtered"], "duplicate_url": stats["filtered_duplicate_url"]}


def run(args: argparse.Namespace) -> int:
    """Print the figures of each size and the worst of them against the goals."""
    runs = [measure(n, args.parts, args.target_fraction, args.seed, not args.no_ids) for n in args.rows]
    out = {"rows_per_s_per_core": min(r["rows_per_s_per_core"] for r in runs),
           "peak_rss_gb": max(r["peak_rss_gb"] for r in runs), "runs": runs, "goals": GOALS, "cpus": os.cpu_count()}
    print(json.dumps(out, indent=1))
    return 0

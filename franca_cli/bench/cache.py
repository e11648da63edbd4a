"""``franca bench cache``: what keying stages by content costs, and a re-run served wholly from the store (JSON).

    franca bench cache                       # 1 GB file; then the demo config run twice on a fresh storage root
    franca bench cache --gb 0.2 --no-rerun   # the keying figures only
    franca bench cache --storage .franca/store-bench   # re-use a root that already holds the demo run

- ``first_key_s_per_gb``: seconds per GB to key a file never seen before (its sha256, streamed);
- ``unchanged_key_s``: keying the same, unchanged file again (its identity found in the digest memo: no read);
- ``cached_rerun_s``: wall time of ``franca``'s flow re-run on the demo config when every stage is served from the
  store (keys, checked hits, MLflow stubs), in the process that made the first run (Prefect's temporary server is
  already up). Goals: ``unchanged_key_s`` <= 0.1, ``cached_rerun_s`` <= 30 on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from franca_cli.options import add_config_options

HELP = "cost of content keys (first / unchanged file) and of a fully cached re-run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The config options, ``--gb``, ``--storage`` and ``--no-rerun``."""
    add_config_options(parser)
    parser.add_argument("--gb", type=float, default=1.0, help="size of the file to key (GB)")
    parser.add_argument("--storage", default=None, help="storage root of the re-run (default: a fresh folder)")
    parser.add_argument("--no-rerun", action="store_true", help="only the keying figures")


def keying(gb: float, folder: Path) -> dict[str, float]:
    """Key a ``gb``-sized file with an empty digest memo, then again."""
    from tasks.common.digests import DigestMemo, content_digest

    path, block = folder / "source.bin", os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(int(gb * 1024)):
            f.write(block)
    memo = DigestMemo(folder / "memo.sqlite")
    t0 = time.perf_counter()
    first = content_digest(str(path), memo)
    t1 = time.perf_counter()
    again = content_digest(str(path), memo)
    t2 = time.perf_counter()
    assert first == again
    return {"file_gb": round(path.stat().st_size / 2**30, 3), "first_key_s": round(t1 - t0, 3),
            "first_key_s_per_gb": round((t1 - t0) / (path.stat().st_size / 2**30), 3),
            "unchanged_key_s": round(t2 - t1, 4)}


def rerun(profile: str, overrides: list[str]) -> dict[str, Any]:
    """The demo config through the flow twice; the second run's wall time and what it computed."""
    from flows.full_pipeline import franca

    t0 = time.perf_counter()
    first = franca(profile=profile, overrides=overrides)
    t1 = time.perf_counter()
    second = franca(profile=profile, overrides=overrides)
    t2 = time.perf_counter()
    computed = [name for name, s in second["stages"].items() if not s["cached"]]
    return {"first_run_s": round(t1 - t0, 1), "cached_rerun_s": round(t2 - t1, 1), "rerun_computed": computed,
            "same_model": first.get("model") == second.get("model")}


def run(args: argparse.Namespace) -> int:
    """Print the keying and re-run figures."""
    from franca_cli.demo import DEMO_OVERRIDES

    with tempfile.TemporaryDirectory(prefix="franca-bench-cache-") as tmp:
        out: dict[str, Any] = keying(args.gb, Path(tmp))
        if not args.no_rerun:
            root = args.storage or str(Path(tmp) / "store")
            os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(Path(root).resolve().parent / "prefect-results"))
            overrides = [*DEMO_OVERRIDES, *args.overrides, f"storage.root={root}"]
            out |= rerun(args.config or args.profile, overrides)
    out |= {"goals": {"unchanged_key_s": 0.1, "cached_rerun_s": 30}, "cpus": os.cpu_count()}
    print(json.dumps(out, indent=1))
    return 0

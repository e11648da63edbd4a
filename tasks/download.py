"""Stage 2 (download): subset Parquet -> webdataset shards with img2dataset, failures counted by cause.

img2dataset runs in a child process (``tasks.download_worker``) writing into the stage's scratch folder
(``<root>/download/.work-<key>/shards/``, used under the stage's lock) in incremental mode, so a killed run resumes:
finished shards are kept, the rest redone. When every shard is finished the shards move to
``<root>/download/<key>/shards/`` with ``samples.parquet`` (one row per URL: key, shard, status, cause, original
sha256) and ``img2dataset_stats.json``. Corpus URLs are served from the source
folder on 127.0.0.1 for the duration of the run. The result's digest hashes the sorted (sample id, cause, sha256)
rows: identical for a resumed and an uninterrupted run, although their tar files differ.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from franca_core.config import DownloadConfig, PipelineConfig
from franca_core.data.corpus import PLACEHOLDER
from franca_core.data.download_causes import CAUSES, SUCCESS
from franca_core.data.img2dataset_io import finished_shards, merged_stats, read_download_log
from infra.offline import offline_env
from tasks.common.contract import stage
from tasks.common.digests import sha256_json
from tasks.common.store import StageResult, Workspace, move_tree
from tasks.common.tables import read_parquet, write_parquet
from tasks.download_server import serve_folder

REPO_ROOT = Path(__file__).resolve().parents[1]


class DownloadError(RuntimeError):
    """The download produced nothing usable (all URLs failed) or img2dataset did not finish."""


@contextmanager
def served_urls(urls: list[str], source_root: str | None) -> Iterator[list[str]]:
    """The URLs to fetch: corpus placeholders rewritten to a server on 127.0.0.1 started for the block."""
    if not any(u.startswith(PLACEHOLDER) for u in urls):
        yield urls
        return
    if not source_root:
        raise DownloadError(f"the subset has corpus URLs ({PLACEHOLDER}...) but no files['source_root'] to serve")
    with serve_folder(source_root) as server:
        yield [server.base_url + u[len(PLACEHOLDER):] if u.startswith(PLACEHOLDER) else u for u in urls]


def img2dataset_spec(dl: DownloadConfig, url_list: str, output_folder: str) -> dict[str, object]:
    """The ``img2dataset.download`` arguments of the download stage (also what ``franca bench download`` times).

    ``url_list``: a Parquet with ``url``, ``caption`` and ``sample_id`` columns. ``skip_reencode``: a JPEG within
    ``long_side`` is stored byte for byte (no decode-resize-encode round trip: faster, no quality loss, and
    exact-duplicate hashes are the source's).
    """
    return {
        "url_list": url_list, "input_format": "parquet", "url_col": "url", "caption_col": "caption",
        "save_additional_columns": ["sample_id"], "output_format": "webdataset", "output_folder": output_folder,
        "image_size": dl.long_side, "resize_mode": "keep_ratio_largest", "resize_only_if_bigger": True,
        "encode_format": "jpg", "encode_quality": dl.encode_quality, "processes_count": dl.processes,
        "thread_count": dl.threads, "number_sample_per_shard": dl.shard_size, "retries": dl.retries,
        "timeout": math.ceil(dl.timeout_s), "incremental_mode": "incremental", "extract_exif": False,
        "compute_hash": "sha256", "disallowed_header_directives": [], "enable_wandb": False, "max_shard_retry": 1,
        "skip_reencode": True, "max_image_pixels": dl.max_image_pixels}


def run_img2dataset(spec: dict[str, object], work: str) -> None:
    """Run ``tasks.download_worker`` on ``spec`` in a child process; its output goes to ``work/img2dataset.log``."""
    spec_path, log_path = f"{work}/spec.json", f"{work}/img2dataset.log"
    Path(spec_path).write_text(json.dumps(spec))
    env = {**offline_env(), **os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))}
    with open(log_path, "wb") as log:
        rc = subprocess.run([sys.executable, "-m", "tasks.download_worker", spec_path], stdout=log,
                            stderr=subprocess.STDOUT, env=env, check=False).returncode
    if rc != 0:
        tail = Path(log_path).read_text(errors="replace")[-2000:]
        raise DownloadError(f"img2dataset exited with status {rc}; last output:\n{tail}")


@stage("download", reads=("data.download",), inputs=("subset",), retried=True)
def download(cfg: PipelineConfig, ws: Workspace, subset: StageResult) -> StageResult:
    """Download ``subset`` (a select result) with ``cfg.data.download``; resumes an interrupted download.

    Raises:
        DownloadError: no URL could be downloaded (the message gives the causes), or img2dataset failed.
    """
    dl, fs, partial = cfg.data.download, ws.fs, ws.scratch("shards")
    rows = read_parquet(subset.files["subset"], columns=["sample_id", "url", "caption"])
    with tempfile.TemporaryDirectory(prefix="franca-download-") as work, \
            served_urls(rows.column("url").to_pylist(), subset.files.get("source_root")) as urls:
        rows = rows.set_column(rows.schema.get_field_index("url"), "url", pa.array(urls, pa.string()))
        pq.write_table(rows, f"{work}/urls.parquet")
        run_img2dataset(img2dataset_spec(dl, f"{work}/urls.parquet", ws.store.uri(partial)), work)
    expected = math.ceil(rows.num_rows / dl.shard_size)
    if (n_done := len(finished_shards(fs, partial))) < expected:
        raise DownloadError(f"img2dataset finished {n_done} of {expected} shards; run the stage again to resume")
    log = read_download_log(fs, partial)
    causes = log.column("cause").to_pylist()
    counts = {c: causes.count(c) for c in CAUSES}
    if counts[SUCCESS] == 0:
        raise DownloadError(f"all {len(causes)} URLs failed to download: "
                            f"{ {c: n for c, n in counts.items() if n} }")
    out_digest = sha256_json(sorted(zip(log.column("sample_id").to_pylist(), causes,
                                        [h or "" for h in log.column("sha256").to_pylist()])))
    shard_names = [s.rsplit("/", 1)[-1] for s in log.column("shard").to_pylist()]
    samples = log.select(["sample_id", "key", "status", "cause", "error_message", "sha256", "width", "height",
                          "original_width", "original_height"])
    samples = samples.append_column("shard", pa.array([ws.uri(f"shards/{n}") for n in shard_names]))
    stats_i2d = merged_stats(fs, partial)
    with ws.writing() as tmp:
        if fs.exists(f"{partial}/_tmp"):
            fs.rm(f"{partial}/_tmp", recursive=True)
        move_tree(fs, partial, f"{tmp}/shards")
        write_parquet(samples.sort_by("sample_id"), fs, f"{tmp}/samples.parquet")
        with fs.open(f"{tmp}/img2dataset_stats.json", "w") as f:
            json.dump(stats_i2d, f, indent=1)
    return ws.result(out_digest, {
        **{k: v for k, v in subset.files.items() if k in ("subset", "source_root")}, "shards": "shards",
        "download_stats": "img2dataset_stats.json", "samples": "samples.parquet"},
        {**subset.stats, "attempted": len(causes), **counts})

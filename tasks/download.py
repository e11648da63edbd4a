"""Stage 2 (download): subset Parquet -> webdataset shards with img2dataset, failures counted by cause.

img2dataset runs in a child process (``tasks.download_worker``) writing into the stage's scratch folder
(``<root>/download/.work-<key>/shards/``, used under the stage's lock) in incremental mode, so a killed run resumes:
finished shards are kept, the rest redone. Every URL goes through the fetch policy of ``tasks.download_guard``
(http(s) only, public addresses unless on ``data.download.allow_hosts``, redirects checked, ``max_bytes``,
``deadline_s``, X-Robots-Tag opt-outs with ``user_agent_token``); a refusal is a counted cause like any failure.
Corpus URLs are served from the source folder on 127.0.0.1 for the duration of the run, that server's address
allow-listed for the run only.

When every shard is finished the shards move to ``<root>/download/<key>/shards/`` with ``samples.parquet`` (one row
per URL: key, shard, status, cause, original sha256, and the sample's metadata: the subset's URL, caption,
similarity, license, the metadata's declared size as ``source_width`` / ``source_height``, ...), the same metadata in
each sample's ``.json`` in the shards (img2dataset's ``save_additional_columns``; its ``url`` there is the URL
fetched, its ``original_width`` / ``original_height`` the downloaded image's), ``img2dataset_stats.json`` and
``img2dataset.log`` (the worker's output over the attempts that ended; kept in the scratch folder between attempts,
while a killed attempt's output goes with its temporary folder). While it runs, a progress line (finished shards,
URLs, rate, ETA) is printed every ``PROGRESS_EVERY_S`` seconds. The result's digest hashes the sorted (sample id,
cause, sha256) rows: identical for a resumed and an uninterrupted run, although their tar files differ.

``data.download.distributor: ray`` runs each shard as a Ray task on the nodes of the cluster at ``RAY_ADDRESS`` (else
a local Ray), the same shard code writing into the same scratch folder, which every node must then reach
(``tasks.download_ray``); the stats then name the node of each shard (``shard_nodes``). Counts and digest are those of
one process.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from franca_core.config import DownloadConfig, PipelineConfig
from franca_core.data.corpus import PLACEHOLDER
from franca_core.data.download_causes import CAUSES, SUCCESS
from franca_core.data.img2dataset_io import finished_shards, merged_stats, read_download_log
from infra.offline import offline_env
from tasks import download_worker
from tasks.common.contract import stage
from tasks.common.digests import sha256_json
from tasks.common.store import StageResult, Workspace, move_tree
from tasks.common.tables import read_parquet, write_parquet
from tasks.download_ray import shard_nodes
from tasks.download_server import serve_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
PROGRESS_EVERY_S = 5.0
# Fields img2dataset writes itself into each sample's metadata: a subset column of one of these names is passed
# through as ``source_<name>`` (LAION's width/height, the size the metadata declares, become source_width/height).
I2D_FIELDS = frozenset({"url", "caption", "key", "status", "error_message", "width", "height", "original_width",
                        "original_height", "sha256", "exif"})


class DownloadError(RuntimeError):
    """The download produced nothing usable (all URLs failed) or img2dataset did not finish."""


@contextmanager
def served_urls(urls: list[str], source_root: str | None) -> Iterator[tuple[list[str], tuple[str, ...]]]:
    """``(URLs to fetch, hosts to allow)``: corpus placeholders rewritten to a server on 127.0.0.1 for the block."""
    if not any(u.startswith(PLACEHOLDER) for u in urls):
        yield urls, ()
        return
    if not source_root:
        raise DownloadError(f"the subset has corpus URLs ({PLACEHOLDER}...) but no files['source_root'] to serve")
    with serve_folder(source_root) as server:
        yield ([server.base_url + u[len(PLACEHOLDER):] if u.startswith(PLACEHOLDER) else u for u in urls],
               (server.host_port,))


def url_table(subset: pa.Table, urls: Sequence[str]) -> pa.Table:
    """img2dataset's input: ``url`` (the URLs to fetch), ``caption`` and every other scalar column of ``subset``.

    A column named like a field img2dataset writes itself (``I2D_FIELDS``) is renamed ``source_<name>``; columns of
    other types (lists, binary, timestamps) are left out, as img2dataset writes the metadata as JSON.
    """
    scalar = (pa.types.is_string, pa.types.is_large_string, pa.types.is_integer, pa.types.is_floating,
              pa.types.is_boolean)
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        "url": pa.array(urls, pa.string()),
        "caption": subset.column("caption") if "caption" in subset.column_names else pa.nulls(len(urls), pa.string())}
    for name in subset.column_names:
        if name not in ("url", "caption") and any(test(subset.schema.field(name).type) for test in scalar):
            columns[f"source_{name}" if name in I2D_FIELDS else name] = subset.column(name)
    return pa.table(columns)


def img2dataset_spec(dl: DownloadConfig, url_list: str, output_folder: str, allow_hosts: Sequence[str] = (),
                     columns: Sequence[str] = ("sample_id",)) -> dict[str, object]:
    """The ``img2dataset.download`` arguments of the download stage (also what ``franca bench download`` times).

    ``url_list``: a Parquet with ``url``, ``caption`` and ``columns`` (passed through into every sample's metadata).
    ``allow_hosts``: added to ``dl.allow_hosts`` (the corpus server of this run). ``skip_reencode``: a JPEG within
    ``long_side`` is stored byte for byte (no decode-resize-encode round trip: faster, no quality loss, and
    exact-duplicate hashes are the source's). Beyond img2dataset's arguments: ``max_image_pixels``, the fetch
    policy's ``allow_hosts``, ``max_bytes``, ``deadline_s`` (``tasks.download_worker.GUARD_KEYS``) and
    ``distributor`` (forked processes or Ray tasks).
    """
    return {
        "url_list": url_list, "input_format": "parquet", "url_col": "url", "caption_col": "caption",
        "save_additional_columns": list(columns), "output_format": "webdataset", "output_folder": output_folder,
        "image_size": dl.long_side, "resize_mode": "keep_ratio_largest", "resize_only_if_bigger": True,
        "encode_format": "jpg", "encode_quality": dl.encode_quality, "processes_count": dl.processes,
        "thread_count": dl.threads, "number_sample_per_shard": dl.shard_size, "retries": dl.retries,
        "timeout": dl.timeout_s, "incremental_mode": "incremental", "extract_exif": False,
        "compute_hash": "sha256", "user_agent_token": dl.user_agent_token,
        "disallowed_header_directives": list(dl.disallowed_header_directives), "enable_wandb": False,
        "max_shard_retry": 1, "skip_reencode": True, "max_image_pixels": dl.max_image_pixels,
        "allow_hosts": [*dl.allow_hosts, *allow_hosts], "max_bytes": dl.max_bytes, "deadline_s": dl.deadline_s,
        "distributor": dl.distributor}


class ShardProgress:
    """A progress line from the shards img2dataset has finished in a folder (their ``_stats.json``)."""

    def __init__(self, folder: str, total_urls: int, shard_size: int) -> None:
        self.fs, self.path = fsspec.core.url_to_fs(folder)
        self.total_urls, self.total_shards = total_urls, math.ceil(total_urls / shard_size)
        self.counts: dict[str, tuple[int, int]] = {}  # stats file -> (URLs, successes)
        self._scan()
        self.resumed, self.started = self.urls, time.monotonic()  # shards of an earlier attempt are not this rate

    @property
    def urls(self) -> int:
        return sum(n for n, _ in self.counts.values())

    def _scan(self) -> None:
        self.fs.invalidate_cache(self.path)  # the worker process writes them: s3fs would serve a cached listing
        for path in self.fs.glob(f"{self.path}/*_stats.json") if self.fs.exists(self.path) else []:
            if path not in self.counts:
                try:
                    with self.fs.open(path, "r") as f:
                        stats = json.load(f)
                except (OSError, ValueError):  # being written: counted at the next look
                    continue
                self.counts[path] = (int(stats.get("count", 0)), int(stats.get("successes", 0)))

    def line(self) -> str:
        """``download: 3/8 shards, 1500/4000 URLs (1420 ok), 310.2 URLs/s, ETA 00:00:08``."""
        self._scan()
        urls, ok = self.urls, sum(s for _, s in self.counts.values())
        rate = (urls - self.resumed) / max(time.monotonic() - self.started, 1e-9)
        eta = time.strftime("%H:%M:%S", time.gmtime((self.total_urls - urls) / rate)) if rate > 0 else "unknown"
        return (f"download: {len(self.counts)}/{self.total_shards} shards, {urls}/{self.total_urls} URLs ({ok} ok), "
                f"{rate:.1f} URLs/s, ETA {eta}")


def run_img2dataset(spec: dict[str, object], work: str, progress: ShardProgress | None = None,
                    every_s: float = PROGRESS_EVERY_S) -> None:
    """Run ``tasks.download_worker`` on ``spec`` in a child process, its output appended to ``work/img2dataset.log``.

    With ``progress``, its line is printed every ``every_s`` seconds while the child runs, and once at the end.
    """
    spec_path, log_path = f"{work}/spec.json", f"{work}/img2dataset.log"
    Path(spec_path).write_text(json.dumps(spec))
    env = {**offline_env(), **os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))}
    with open(log_path, "ab") as log, subprocess.Popen(
            [sys.executable, "-m", download_worker.__name__, spec_path], stdout=log, stderr=subprocess.STDOUT,
            env=env) as child:
        try:
            while (rc := _wait(child, every_s if progress is not None else None)) is None:
                print(progress.line() if progress is not None else "", flush=True)
        except BaseException:
            child.kill()  # an interrupted stage leaves no img2dataset writing behind it
            raise
    if progress is not None:
        print(progress.line(), flush=True)
    if rc != 0:
        tail = Path(log_path).read_text(errors="replace")[-2000:]
        raise DownloadError(f"img2dataset exited with status {rc}; last output:\n{tail}")


def _wait(child: subprocess.Popen[bytes], timeout_s: float | None) -> int | None:
    """The child's exit status, or None if it still runs after ``timeout_s``."""
    try:
        return child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None


def samples_table(log: pa.Table, subset: pa.Table, shard_uris: Sequence[str]) -> pa.Table:
    """``samples.parquet``: img2dataset's rows with ``cause``, ``shard`` (the published tar) and the subset's URL.

    ``url`` is the subset's (a corpus URL, not the 127.0.0.1 address it was fetched from); every column passed
    through to img2dataset (caption, similarity, license, source_width, ...) is kept.
    """
    samples = log.drop_columns([c for c in ("url", "shard") if c in log.column_names])
    rows = pc.index_in(samples.column("sample_id"), value_set=subset.column("sample_id"))
    samples = samples.append_column("url", pc.take(pc.cast(subset.column("url"), pa.string()), rows))
    return samples.append_column("shard", pa.array(shard_uris, pa.string())).sort_by("sample_id")


def _fetch_all(dl: DownloadConfig, subset: StageResult, rows: pa.Table, ws: Workspace) -> None:
    """Run img2dataset on ``rows`` into the scratch folder; its log kept in scratch across attempts."""
    fs, partial, kept_log = ws.fs, ws.scratch("shards"), ws.scratch("img2dataset.log")
    with tempfile.TemporaryDirectory(prefix="franca-download-") as work, \
            served_urls(pc.cast(rows.column("url"), pa.string()).to_pylist(),
                        subset.files.get("source_root")) as (urls, allow):
        table = url_table(rows, urls)
        pq.write_table(table, f"{work}/urls.parquet")
        if fs.exists(kept_log):
            fs.get_file(kept_log, f"{work}/img2dataset.log")
        spec = img2dataset_spec(dl, f"{work}/urls.parquet", ws.store.uri(partial), allow, table.column_names[2:])
        try:
            run_img2dataset(spec, work, ShardProgress(ws.store.uri(partial), rows.num_rows, dl.shard_size))
        finally:
            if Path(work, "img2dataset.log").exists():
                fs.makedirs(kept_log.rsplit("/", 1)[0], exist_ok=True)
                fs.put_file(f"{work}/img2dataset.log", kept_log)


# Where the shards run, not what they hold: same counts and digest with either distributor.
@stage("download", reads=("data.download",), operational=("data.download.distributor",), inputs=("subset",),
       retried=True)
def download(cfg: PipelineConfig, ws: Workspace, subset: StageResult) -> StageResult:
    """Download ``subset`` (a select result) with ``cfg.data.download``; resumes an interrupted download.

    Raises:
        DownloadError: no URL could be downloaded (the message gives the causes), or img2dataset failed.
    """
    dl, fs, partial = cfg.data.download, ws.fs, ws.scratch("shards")
    rows = read_parquet(subset.files["subset"])
    _fetch_all(dl, subset, rows, ws)
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
    shards = [ws.uri(f"shards/{s.rsplit('/', 1)[-1]}") for s in log.column("shard").to_pylist()]
    samples = samples_table(log, rows, shards)
    stats_i2d = merged_stats(fs, partial)
    nodes = shard_nodes(fs.cat_file(ws.scratch("img2dataset.log")).decode(errors="replace"))
    with ws.writing() as tmp:
        if fs.exists(f"{partial}/_tmp"):
            fs.rm(f"{partial}/_tmp", recursive=True)
        move_tree(fs, partial, f"{tmp}/shards")
        fs.mv(ws.scratch("img2dataset.log"), f"{tmp}/img2dataset.log")
        write_parquet(samples, fs, f"{tmp}/samples.parquet")
        with fs.open(f"{tmp}/img2dataset_stats.json", "w") as f:
            json.dump(stats_i2d, f, indent=1)
    return ws.result(out_digest, {
        **{k: v for k, v in subset.files.items() if k in ("subset", "source_root")}, "shards": "shards",
        "download_stats": "img2dataset_stats.json", "samples": "samples.parquet", "log": "img2dataset.log"},
        {**subset.stats, "attempted": len(causes), **counts, **({"shard_nodes": nodes} if nodes else {})})

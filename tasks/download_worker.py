"""``python -m tasks.download_worker SPEC.json``: one ``img2dataset.download`` call in its own process.

The download stage runs img2dataset in a child process so that a killed download leaves only finished shards
(``*_stats.json``) and unfinished files that img2dataset's incremental mode redoes on the next run. The spec is
the keyword arguments of ``img2dataset.download`` plus ``max_image_pixels`` and the fetch policy's
``allow_hosts``, ``max_bytes`` and ``deadline_s`` (``GUARD_KEYS``).

Every URL is fetched by ``tasks.download_guard.Fetcher`` (http(s) only, public addresses unless allow-listed,
redirects checked, a byte cap and a deadline, X-Robots-Tag opt-outs): ``install_fetcher`` puts it in the place of
img2dataset's module-level ``download_image_with_retry``, which ``Downloader.download_shard`` looks up per shard. That
one name is the whole plug: the rest of img2dataset's shard loop (threads, hashing, resizing, writing) runs as is.

Every payload goes through ``SniffingResizer``, which classifies it (non-image, decompression bomb, corrupt) from its
header before img2dataset's resizer lets OpenCV decode it; the cause is the prefix of the row's ``error_message``
(``quality.download_cause``).

This drives img2dataset's own components (``Reader``, ``Downloader``, ``Resizer``, ``WebDatasetSampleWriter``,
the same incremental rule: a shard is done when its ``_stats.json`` exists) rather than ``img2dataset.download``:
its spawn pool and logger process each start an interpreter importing img2dataset (and torch through webdataset),
seconds of fixed cost on a small machine. With ``processes_count > 1`` the shards go to that many processes forked
after the imports, each with its own GIL (one process spends about 2 ms of CPU per image, its result loop and its
download threads sharing one GIL; measured on 2 cores, 2 processes raised the benchmark ratio from 0.54 to 0.73).
With ``distributor: ray`` in the spec each shard is instead a Ray task on a cluster's nodes (``tasks.download_ray``),
running the same ``Downloader`` with the same guarded fetch.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from franca_core.data.download_causes import CORRUPT, classify_payload
from tasks.download_guard import Fetcher, FetchPolicy

GUARD_KEYS = ("allow_hosts", "max_bytes", "deadline_s")

Result = tuple[Any, Any, Any, Any, Any, Any]  # img2dataset's (img, width, height, orig_w, orig_h, error)
# Shards (img2dataset's ``(shard id, shard file)`` rows) -> ``(finished, row, node id or "")`` as each one ends.
Mapper = Callable[[list[Any]], Iterable[tuple[bool, Any, str]]]


class SniffingResizer:
    """Wraps img2dataset's resizer: payload classification first, then its decode + resize + encode."""

    def __init__(self, resizer: Any, max_pixels: int) -> None:
        self.resizer, self.max_pixels = resizer, max_pixels

    def __call__(self, img_stream: io.BytesIO, blurring_bbox_list: Any = None) -> Result:
        verdict = classify_payload(img_stream.getvalue(), self.max_pixels)
        if verdict is not None:
            return None, None, None, None, None, f"{verdict[0]}: {verdict[1]}"
        img_stream.seek(0)
        out = self.resizer(img_stream, blurring_bbox_list)
        if out[-1] is not None:  # the header looked fine but the data does not decode
            return (*out[:-1], f"{CORRUPT}: {out[-1]}")
        return out


_DOWNLOADER: Any = None  # set before forking: the pool's workers inherit it instead of unpickling one


def _die_with_parent() -> None:
    """Pool initializer: a worker gets SIGKILL when its parent dies, so a killed download leaves no shard writer."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _download_shard(row: Any) -> tuple[bool, Any]:
    return _DOWNLOADER(row)


def install_fetcher(policy: FetchPolicy) -> Fetcher:
    """Make img2dataset fetch every URL through a guarded ``Fetcher`` (in this process and those forked from it)."""
    from img2dataset import downloader

    if not callable(getattr(downloader, "download_image_with_retry", None)):
        raise RuntimeError("img2dataset.downloader.download_image_with_retry is gone: the guarded fetch cannot be "
                           "installed with this img2dataset version (1.47 expected)")
    fetcher = Fetcher(policy)
    downloader.download_image_with_retry = fetcher.download_with_retry
    return fetcher


def policy_of(spec: dict[str, Any], guard: dict[str, Any]) -> FetchPolicy:
    """The fetch policy of a spec: its img2dataset ``timeout`` / ``user_agent_token`` / directives and ``guard``."""
    return FetchPolicy(allow_hosts=tuple(guard["allow_hosts"]), max_bytes=int(guard["max_bytes"]),
                       deadline_s=float(guard["deadline_s"]), timeout_s=float(spec["timeout"]),
                       user_agent_token=spec.get("user_agent_token"),
                       disallowed_header_directives=tuple(spec.get("disallowed_header_directives") or ()))


def build_downloader(spec: dict[str, Any], column_list: list[str], max_pixels: int) -> Any:
    """img2dataset's ``Downloader`` of ``spec`` (its shard loop), payloads classified by ``SniffingResizer``.

    ``column_list``: the columns of the Reader's shard files (``Reader.column_list``).
    """
    from img2dataset.downloader import Downloader
    from img2dataset.resizer import Resizer
    from img2dataset.writer import WebDatasetSampleWriter

    resizer = SniffingResizer(Resizer(
        image_size=spec["image_size"], resize_mode=spec["resize_mode"],
        resize_only_if_bigger=spec["resize_only_if_bigger"], encode_quality=spec["encode_quality"],
        encode_format=spec["encode_format"], skip_reencode=spec.get("skip_reencode", False)), max_pixels)
    return Downloader(
        sample_writer_class=WebDatasetSampleWriter, resizer=resizer, thread_count=spec["thread_count"],
        save_caption=True, extract_exif=spec["extract_exif"], output_folder=spec["output_folder"],
        column_list=column_list, timeout=spec["timeout"], number_sample_per_shard=spec["number_sample_per_shard"],
        oom_shard_count=5, compute_hash=spec["compute_hash"], verify_hash_type=None,
        encode_format=spec["encode_format"], retries=spec["retries"],
        user_agent_token=None, disallowed_header_directives=None)  # the token and the directives are the Fetcher's


def run(spec: dict[str, Any], max_pixels: int, policy: FetchPolicy) -> None:
    """``img2dataset.download`` of ``spec``, without its spawn pool and logger (see module docstring).

    The Reader cuts the URL list into shard files under ``<output_folder>/_tmp`` here; the shards then go to forked
    processes (``distributor: local``) or to Ray tasks (``ray``, ``tasks.download_ray``), which read those files.
    """
    import fsspec
    from img2dataset.reader import Reader

    out = spec["output_folder"]
    fs, out_path = fsspec.core.url_to_fs(out)
    fs.makedirs(out_path, exist_ok=True)
    done = {int(p.rsplit("/", 1)[-1].split("_")[0]) for p in fs.glob(f"{out_path}/*_stats.json")}
    fs.makedirs(f"{out_path}/_tmp", exist_ok=True)
    reader = Reader(spec["url_list"], spec["input_format"], spec["url_col"], spec["caption_col"], None, None,
                    spec["save_additional_columns"], spec["number_sample_per_shard"], done, f"{out}/_tmp")
    rows = list(reader)
    attempts = 1 + int(spec["max_shard_retry"])
    print(f"download_worker: {len(rows)} shards to download ({len(done)} already done); fetch policy: {policy}",
          flush=True)
    if rows and spec.get("distributor", "local") == "ray":  # no Ray started when every shard is done
        from tasks.download_ray import ray_mapper

        with ray_mapper(spec, reader.column_list, max_pixels, policy) as mapper:
            _download_all(rows, mapper, attempts)
    elif rows:
        with _local_mapper(spec, reader.column_list, max_pixels, policy, len(rows)) as mapper:
            _download_all(rows, mapper, attempts)
    if fs.exists(f"{out_path}/_tmp"):
        fs.rm(f"{out_path}/_tmp", recursive=True)


@contextlib.contextmanager
def _local_mapper(spec: dict[str, Any], column_list: list[str], max_pixels: int, policy: FetchPolicy,
                  n_rows: int) -> Iterator[Mapper]:
    """Shards through one ``Downloader``, in ``processes_count`` processes forked after the imports."""
    global _DOWNLOADER
    install_fetcher(policy)
    _DOWNLOADER = build_downloader(spec, column_list, max_pixels)
    processes = max(1, min(int(spec["processes_count"]), n_rows))
    print(f"download_worker: {processes} process(es) x {spec['thread_count']} threads", flush=True)
    with (multiprocessing.get_context("fork").Pool(processes, initializer=_die_with_parent) if processes > 1
          else contextlib.nullcontext()) as pool:
        imap = pool.imap_unordered if pool is not None else map
        yield lambda rows: ((ok, row, "") for ok, row in imap(_download_shard, rows))


def _download_all(rows: list[Any], mapper: Mapper, attempts: int) -> None:
    """Every shard of ``rows`` through ``mapper``; a failed shard is retried (img2dataset's ``max_shard_retry``)."""
    for attempt in range(attempts):
        failed = []
        for ok, row, node in mapper(rows):
            where = f" on node {node}" if node else ""
            print(f"download_worker: shard {row[0]:05d} {'finished' if ok else 'failed'}{where}", flush=True)
            if not ok:
                failed.append(row)
        if not failed:
            break
        rows = failed
        if attempt + 1 < attempts:
            print(f"download_worker: retrying {len(rows)} failed shard(s)", flush=True)


def main(spec_path: str) -> int:
    """Run the download described by ``spec_path``."""
    from infra.offline import apply_offline_env

    apply_offline_env()  # before img2dataset imports albumentations, which checks PyPI for updates otherwise
    with open(spec_path) as f:
        spec: dict[str, Any] = json.load(f)
    max_pixels = int(spec.pop("max_image_pixels"))
    guard = {k: spec.pop(k) for k in GUARD_KEYS}
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(max_pixels))  # OpenCV's own guard, defence in depth
    run(spec, max_pixels, policy_of(spec, guard))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

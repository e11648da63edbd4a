"""The download stage's shards as Ray tasks on the nodes of a cluster (``data.download.distributor: ray``).

``tasks.download_worker`` (the stage's child process) cuts the URL list into img2dataset's shard files under the
output folder's ``_tmp`` and then, as a Ray driver, hands each shard to one Ray task (one CPU, spread over the nodes).
The task runs the same code as one process: img2dataset's ``Downloader`` (``download_worker.build_downloader``) with
the guarded fetch (``download_worker.install_fetcher``), and writes ``NNNNN.tar`` / ``.parquet`` / ``_stats.json``
into the output folder itself. So that folder (the stage's scratch folder under ``storage.root``) must be one every
node reaches: ``s3://``, a shared filesystem, or a local path when every node runs on this machine; a node that cannot
read its shard file stops the download with that cause (``SharedStorageError``). Resuming is img2dataset's rule, as
in one process: a shard is done when its ``_stats.json`` exists. The driver logs the node of each finished shard,
which ``shard_nodes`` reads back from the log.

Ray is the cluster at ``RAY_ADDRESS``, else a local Ray bound to 127.0.0.1, on the rules of
``tasks.common.ray_session``: the nodes get the offline settings through ``runtime_env`` and credentials only
through their own environment (a local Ray's workers inherit this process's). The corpus server of a generated
corpus stays in the stage's process on 127.0.0.1 (allow-listed as in one process): reachable from nodes on this
machine only.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tasks.common.ray_session import ray_session
from tasks.download_guard import FetchPolicy
from tasks.download_worker import Mapper

# The driver's line for a shard a task finished (``download_worker._download_all``); the Ray workers' own output
# reaches the log prefixed with ``(pid=...)``, so it never matches.
_FINISHED = re.compile(r"^download_worker: shard (\d+) finished on node (\w+)$", re.MULTILINE)


class SharedStorageError(RuntimeError):
    """A node running a shard cannot read the download's output folder: ``storage.root`` is not shared storage."""


def shard_nodes(log: str) -> dict[str, str]:
    """``{shard id: node id}`` of the shards Ray tasks finished, from the download log (``img2dataset.log``)."""
    return dict(_FINISHED.findall(log))


def download_shard(spec: dict[str, Any], column_list: list[str], max_pixels: int, policy: FetchPolicy,
                   row: tuple[int, str]) -> tuple[bool, Any, str]:
    """One shard, in a Ray worker: ``(finished, row, this node's id)``.

    Raises:
        SharedStorageError: this node cannot see the shard file the driver wrote.
    """
    import fsspec

    fs, path = fsspec.core.url_to_fs(row[1])
    if not fs.exists(path):
        raise SharedStorageError(
            f"the Ray node on {socket.gethostname()} cannot read the shard file {row[1]}: with "
            "data.download.distributor=ray, storage.root must be storage every Ray node reaches (s3:// or a shared "
            "filesystem)")
    import ray

    from tasks.download_worker import build_downloader, install_fetcher

    node = ray.get_runtime_context().get_node_id()
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(max_pixels))  # as download_worker.main does
    install_fetcher(policy)  # again in every task: a Ray worker process may have run another download's shards
    ok, done = build_downloader(spec, column_list, max_pixels)(row)
    return ok, done, node


@contextmanager
def ray_mapper(spec: dict[str, Any], column_list: list[str], max_pixels: int,
               policy: FetchPolicy) -> Iterator[Mapper]:
    """A ``download_worker.Mapper`` running each shard as a Ray task, results in the order shards finish."""
    with ray_session():
        import ray

        task = ray.remote(download_shard).options(num_cpus=1, scheduling_strategy="SPREAD")
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        print(f"download_worker: Ray tasks on {nodes} node(s), {ray.cluster_resources().get('CPU', 0):g} CPU(s), "
              f"{spec['thread_count']} threads each", flush=True)

        def mapper(rows: list[Any]) -> Iterator[tuple[bool, Any, str]]:
            pending = {task.remote(spec, column_list, max_pixels, policy, row): row for row in rows}
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                row = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    if isinstance(exc.cause, SharedStorageError):
                        raise exc.cause from None
                    print(f"download_worker: shard {row[0]:05d}: task raised {type(exc.cause).__name__}", flush=True)
                    yield False, row, ""
                except ray.exceptions.RayError as exc:  # a worker or node lost (after Ray's own task retries)
                    print(f"download_worker: shard {row[0]:05d}: {type(exc).__name__}", flush=True)
                    yield False, row, ""

        yield mapper

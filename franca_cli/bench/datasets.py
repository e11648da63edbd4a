"""The benchmarks' data: the ``../shared/data`` folder and the img2dataset-style shards written from it.

``franca bench train`` and ``quality`` drive the real pretrain stage, which reads a dedup stage's output (shards and
a manifest); ``shard_dataset`` writes such an output once from any records and describes it as that stage would.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow.parquet as pq

from franca_core.data.shards import write_manifest, write_shards
from franca_core.data.synthetic import iter_images
from tasks.common.digests import sha256_json
from tasks.common.store import StageResult

# The ../shared/data folder beside the repository (franca_cli/bench/ -> franca_cli/ -> repo -> its parent).
DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

Record = tuple[str, bytes, str]  # (key, image bytes, caption)


def parquet_records(path: Path, limit: int | None = None) -> Iterator[Record]:
    """The rows of a ``../shared/data`` Parquet file as shard records, the label name as caption."""
    table = pq.read_table(path, columns=["key", "image", "label_name"])
    n = table.num_rows if limit is None else min(limit, table.num_rows)
    for i in range(n):
        key = table["key"][i].as_py().replace("/", "_")  # webdataset keys may not contain dots; slashes kept out
        yield key, table["image"][i].as_py(), table["label_name"][i].as_py()


def synthetic_records(n: int) -> Iterator[Record]:
    """``n`` generated 64 px images as JPEG shard records (where ``../shared/data`` is absent)."""
    for i, (image, _, label) in enumerate(iter_images(n, seed=0, size=64)):
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        yield f"{i:09d}", buf.getvalue(), f"shape {label}"


def shard_dataset(records: Iterable[Record], out: Path, shard_size: int = 1000) -> StageResult:
    """Write records as img2dataset-style shards + manifest once; a dedup-like StageResult pointing at them."""
    manifest = out / "manifest.parquet"
    if not manifest.is_file():
        write_manifest(write_shards(records, str(out), shard_size=shard_size), str(manifest))
    table = pq.read_table(manifest, columns=["sample_id", "content_hash"])
    digest = sha256_json(sorted(zip(table["sample_id"].to_pylist(), table["content_hash"].to_pylist())))
    return StageResult(stage="dedup", uri=str(out), input_digest=digest, digest=digest,
                       files={"manifest": str(manifest)})

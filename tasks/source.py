"""Source: the URL list the pipeline starts from, as a LAION-style metadata Parquet with a sha256.

``data.source`` is ``"synthetic"`` (the generated corpus of ``franca_core/data/corpus.py``), a LAION-style metadata
Parquet, or an image set (a ../shared/data Parquet or an image folder), which is written out as a corpus. A metadata
Parquet is copied into the stage's output (a snapshot: later stages read what the key hashed, even if the original
is rewritten in place); the result's digest is that file's sha256. Generated corpora land in the output folder:
``metadata.parquet``, ``annotations.parquet`` (labels, masks, planted faults: kept aside for evaluation and tests)
and ``www/`` (the files the download stage serves on 127.0.0.1).
"""

from __future__ import annotations

import posixpath
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from franca_core.config import PipelineConfig
from franca_core.data.corpus import image_set_corpus, synthetic_corpus
from franca_core.data.image_sets import iter_image_set
from franca_core.data.laion import ALIASES, MetadataError
from tasks.common.contract import stage
from tasks.common.digests import fs_of, sha256_file
from tasks.common.store import StageResult, Workspace
from tasks.common.tables import write_parquet


class SourceChangedError(RuntimeError):
    """The source file changed between keying the stage and copying it."""


def is_metadata(uri: str) -> bool:
    """True for a Parquet with a URL column (LAION metadata), False for an image set."""
    fs, path = fs_of(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"data.source {uri!r} does not exist (valid: 'synthetic', a metadata Parquet, "
                                f"an image Parquet or an image folder)")
    if fs.isdir(path):
        return False
    try:
        with fs.open(path, "rb") as f:
            names = pq.read_schema(f).names
    except (pa.ArrowInvalid, OSError) as exc:
        raise MetadataError(f"data.source {uri!r} is not a readable Parquet file: {exc}") from exc
    return any(ALIASES.get(n, n) == "url" for n in names)


def _contaminants(path: str, count: int, seed: int) -> list[tuple[str, bytes]]:
    items = [(key, data) for key, data, _, _ in iter_image_set(path)]
    picks = np.random.default_rng(seed).choice(len(items), min(count, len(items)), replace=False)
    return [items[i] for i in sorted(picks.tolist())]


def _snapshot(src: str, ws: Workspace) -> StageResult:
    """Copy a metadata Parquet into the output; its sha256 must be the one the key hashed."""
    fs, path = fs_of(src)
    with ws.writing() as tmp:
        with fs.open(path, "rb") as f_in, ws.fs.open(f"{tmp}/metadata.parquet", "wb") as f_out:
            for block in iter(lambda: f_in.read(1 << 22), b""):
                f_out.write(block)
    digest = sha256_file(ws.uri("metadata.parquet"))
    if digest != ws.recipe.get("files", {}).get("data.source", digest):
        raise SourceChangedError(f"data.source {src!r} changed while it was being read; run again")
    rows = pq.read_metadata(ws.fs.open(f"{ws.path}/metadata.parquet", "rb")).num_rows
    return ws.result(digest, {"metadata": "metadata.parquet", "source_root": posixpath.dirname(src),
                              "original": src}, {"rows": rows})


@stage("source", reads=("data.source", "data.synthetic"), files=("data.source", "data.synthetic.contaminate_from"))
def source(cfg: PipelineConfig, ws: Workspace) -> StageResult:
    """Materialise ``cfg.data.source``; the result's digest is the metadata Parquet's sha256."""
    src, syn = cfg.data.source, cfg.data.synthetic
    if src != "synthetic" and is_metadata(src):
        return _snapshot(src, ws)
    if src == "synthetic":
        contam = bool(syn.contaminate_from and syn.contaminate_count)
        planted = _contaminants(str(syn.contaminate_from), syn.contaminate_count, syn.seed) if contam else []
        corpus = synthetic_corpus(syn, planted)
    else:
        corpus = image_set_corpus(iter_image_set(src), seed=syn.seed)
    fs = ws.fs
    with ws.writing() as tmp:
        for folder in {posixpath.dirname(rel) for rel in corpus.files}:
            fs.makedirs(f"{tmp}/{folder}", exist_ok=True)
        fs.pipe({f"{tmp}/{rel}": body for rel, body in corpus.files.items()})
        write_parquet(corpus.metadata, fs, f"{tmp}/metadata.parquet")
        write_parquet(corpus.annotations, fs, f"{tmp}/annotations.parquet")
    planted_counts = Counter(corpus.annotations.column("fault").to_pylist())
    return ws.result(sha256_file(ws.uri("metadata.parquet")),
                     {"metadata": "metadata.parquet", "annotations": "annotations.parquet", "www": "www",
                      "source_root": ws.uri()},
                     {"rows": corpus.metadata.num_rows, "files": len(corpus.files),
                      **{f"planted_{k}": int(v) for k, v in sorted(planted_counts.items())}})

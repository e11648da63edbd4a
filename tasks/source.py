"""Source: the URL list the pipeline starts from, as LAION-style metadata Parquet (one file or its parts).

``data.source`` is ``"synthetic"`` (the generated corpus of ``franca_core/data/corpus.py``), LAION-style metadata
(a Parquet file, or a folder or ``s3://`` prefix of Parquet parts such as LAION's ``part-*.parquet``), or an image
set (a ../shared/data Parquet or an image folder), which is written out as a corpus. Metadata and image sets are told
apart by content: a Parquet (the first part of a folder, by name) with a URL column (``url``/``URL`` or
``data.columns.url``) is metadata. A glob of parts (``.../part-*.parquet``) is listed the same way and keyed by its
matches' content (relative to the folder before its first wildcard). Metadata is copied into the stage's output
(a snapshot: later stages read what the key hashed, even if the original is rewritten in place), part by part for
a folder (``metadata/<relative path>``); the result's digest is the file's sha256, or for parts the sha256 of their
sorted ``(relative path, sha256)`` list (what ``content_digest`` gives a folder). Generated corpora land in the
output folder: ``metadata.parquet``, ``annotations.parquet`` (labels, masks, planted faults: kept aside for
evaluation and tests) and ``www/`` (the files the download stage serves on 127.0.0.1).
"""

from __future__ import annotations

import hashlib
import posixpath
from collections import Counter

import fsspec
import numpy as np
import pyarrow.parquet as pq

from franca_core.config import PipelineConfig
from franca_core.data.corpus import image_set_corpus, synthetic_corpus
from franca_core.data.image_sets import iter_image_set
from tasks.common.contract import stage
from tasks.common.digests import fs_of, has_magic, is_remote, sha256_file, sha256_json
from tasks.common.store import StageResult, Workspace
from tasks.common.tables import write_parquet
from tasks.metadata_parts import is_metadata, list_parts, parts_base


class SourceChangedError(RuntimeError):
    """The source file changed between keying the stage and copying it."""


def _contaminants(path: str, count: int, seed: int) -> list[tuple[str, bytes]]:
    items = [(key, data) for key, data, _, _ in iter_image_set(path)]
    picks = np.random.default_rng(seed).choice(len(items), min(count, len(items)), replace=False)
    return [items[i] for i in sorted(picks.tolist())]


def _copy(src: str, fs_out: fsspec.AbstractFileSystem, dest: str) -> str:
    """Copy ``src`` to ``dest`` on ``fs_out``; the sha256 of the bytes copied."""
    fs, path = fs_of(src)
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f_in, fs_out.open(dest, "wb") as f_out:
        for block in iter(lambda: f_in.read(1 << 22), b""):
            digest.update(block)
            f_out.write(block)
    return digest.hexdigest()


def _snapshot(src: str, ws: Workspace) -> StageResult:
    """Copy a metadata Parquet into the output; its sha256 must be the one the key hashed."""
    with ws.writing() as tmp:
        digest = _copy(src, ws.fs, f"{tmp}/metadata.parquet")
    if digest != ws.recipe.get("files", {}).get("data.source", digest):
        raise SourceChangedError(f"data.source {src!r} changed while it was being read; run again")
    rows = pq.read_metadata(ws.fs.open(f"{ws.path}/metadata.parquet", "rb")).num_rows
    return ws.result(digest, {"metadata": "metadata.parquet", "source_root": posixpath.dirname(src),
                              "original": src}, {"rows": rows, "parts": 1})


def _snapshot_parts(src: str, ws: Workspace) -> StageResult:
    """Copy each part into ``metadata/``; the files hashed while copied must give the digest the key hashed."""
    fs, base, parts = fs_of(src)[0], parts_base(src), list_parts(src)
    hashed: list[tuple[str, str]] = []
    with ws.writing() as tmp:
        for part in parts:
            rel = fs_of(part)[1][len(base):].lstrip("/")
            ws.fs.makedirs(posixpath.dirname(f"{tmp}/metadata/{rel}"), exist_ok=True)
            hashed.append((rel, _copy(part, ws.fs, f"{tmp}/metadata/{rel}")))
    digest = sha256_json({"folder": sorted(hashed)})
    expected = ws.recipe.get("files", {}).get("data.source")
    if expected is not None:  # the key hashed every file of the folder or glob (a _SUCCESS too)
        copied = {fs_of(p)[1] for p in parts}
        listed = fs.glob(fs_of(src)[1]) if has_magic(src) else fs.find(base)
        others = [(p[len(base):].lstrip("/"), sha256_file(fs.unstrip_protocol(p) if is_remote(src) else p))
                  for p in listed if p not in copied and not fs.isdir(p)]
        if sha256_json({"folder": sorted(hashed + others)}) != expected:
            raise SourceChangedError(f"data.source {src!r} changed while it was being read; run again")
    rows = sum(pq.read_metadata(ws.fs.open(f"{ws.path}/metadata/{rel}", "rb")).num_rows for rel, _ in hashed)
    root = fs.unstrip_protocol(base) if is_remote(src) else base
    return ws.result(digest, {"metadata": "metadata", "source_root": root, "original": src},
                     {"rows": rows, "parts": len(parts)})


@stage("source", reads=("data.source", "data.columns", "data.synthetic"),
       files=("data.source", "data.synthetic.contaminate_from"))
def source(cfg: PipelineConfig, ws: Workspace) -> StageResult:
    """Materialise ``cfg.data.source``; the result's digest is the metadata's content digest."""
    src, syn = cfg.data.source, cfg.data.synthetic
    if src != "synthetic" and is_metadata(src, {str(k): v for k, v in cfg.data.columns.items()}):
        return _snapshot(src, ws) if list_parts(src) == [src] else _snapshot_parts(src, ws)
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

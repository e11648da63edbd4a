"""Source: the URL list the pipeline starts from, as a LAION-style metadata Parquet with a sha256.

``data.source`` is ``"synthetic"`` (the generated corpus of ``franca_core/data/corpus.py``), a LAION-style metadata
Parquet (used where it is: its sha256 is the digest), or an image set (a ../shared/data Parquet or an image
folder), which is written out as a corpus. Generated corpora land in ``<root>/source/<input-digest>/``:
``metadata.parquet``, ``annotations.parquet`` (labels, masks, planted faults: kept aside for evaluation and tests)
and ``www/`` (the files the download stage serves on 127.0.0.1).
"""

from __future__ import annotations

import posixpath
from collections import Counter

import numpy as np
import pyarrow.parquet as pq

from franca_core.config import PipelineConfig
from franca_core.data.corpus import image_set_corpus, synthetic_corpus
from franca_core.data.image_sets import image_set_digest, iter_image_set
from franca_core.data.laion import ALIASES
from tasks.data_io import fs_of, open_store, sha256_uri, write_parquet
from tasks.storage import StageResult, input_digest

CORPUS_VERSION = "corpus-v1"  # bump when the generator's output changes: it is part of the input digest


def _is_metadata(uri: str) -> bool:
    """True for a Parquet with a URL column (LAION metadata), False for an image set."""
    fs, path = fs_of(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"data.source {uri!r} does not exist (valid: 'synthetic', a metadata Parquet, "
                                f"an image Parquet or an image folder)")
    if fs.isdir(path):
        return False
    with fs.open(path, "rb") as f:
        names = pq.read_schema(f).names
    return any(ALIASES.get(n, n) == "url" for n in names)


def _contaminants(path: str, count: int, seed: int) -> list[tuple[str, bytes]]:
    items = [(key, data) for key, data, _, _ in iter_image_set(path)]
    picks = np.random.default_rng(seed).choice(len(items), min(count, len(items)), replace=False)
    return [items[i] for i in sorted(picks.tolist())]


def source(cfg: PipelineConfig) -> StageResult:
    """Materialise ``cfg.data.source``; the result's digest is the metadata Parquet's sha256."""
    src, syn = cfg.data.source, cfg.data.synthetic
    if src != "synthetic" and _is_metadata(src):
        digest = sha256_uri(src)
        return StageResult(stage="source", uri=posixpath.dirname(src), input_digest=digest, digest=digest,
                           files={"metadata": src})
    store = open_store(cfg)
    if src == "synthetic":
        contam = image_set_digest(syn.contaminate_from) if syn.contaminate_from and syn.contaminate_count else ""
        digest = input_digest(syn, {"generator": CORPUS_VERSION, "contaminate_from": contam})
    else:
        digest = input_digest({"image_set": image_set_digest(src)}, {"generator": CORPUS_VERSION})
    if (done := store.load("source", digest)) is not None:
        return done
    if src == "synthetic":
        planted = _contaminants(syn.contaminate_from, syn.contaminate_count, syn.seed) if contam else []
        corpus = synthetic_corpus(syn, planted)
    else:
        corpus = image_set_corpus(iter_image_set(src), seed=syn.seed)
    fs = store.fs
    with store.writing("source", digest) as tmp:
        for folder in {posixpath.dirname(rel) for rel in corpus.files}:
            fs.makedirs(f"{tmp}/{folder}", exist_ok=True)
        fs.pipe({f"{tmp}/{rel}": body for rel, body in corpus.files.items()})
        write_parquet(corpus.metadata, fs, f"{tmp}/metadata.parquet")
        write_parquet(corpus.annotations, fs, f"{tmp}/annotations.parquet")
    final = store.path("source", digest)
    metadata = store.uri(f"{final}/metadata.parquet")
    planted_counts = Counter(corpus.annotations.column("fault").to_pylist())
    return store.publish(StageResult(
        stage="source", uri=store.uri(final), input_digest=digest, digest=sha256_uri(metadata),
        stats={"rows": corpus.metadata.num_rows, "files": len(corpus.files),
               **{f"planted_{k}": int(v) for k, v in sorted(planted_counts.items())}},
        files={"metadata": metadata, "annotations": store.uri(f"{final}/annotations.parquet"),
               "www": store.uri(f"{final}/www")}))

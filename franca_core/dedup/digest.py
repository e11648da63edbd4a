"""The dataset's identity: sha256 of its sorted (sample id, content hash) list.

Shard files are not hashed: img2dataset writes tar members in completion order, so two identical runs produce
different tar bytes (../shared/STACK.md). What identifies a dataset is which samples it holds and what their
pixels are. Serialisation (fixed, so anyone can recompute it): rows sorted by ``(sample_id, content_hash)``,
each ``f"{sample_id}\\t{content_hash}\\n"`` in UTF-8, hashed in order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def dataset_digest(rows: Iterable[tuple[str, str]]) -> str:
    """sha256 hex over the sorted ``(sample_id, content_hash)`` rows (see module docstring)."""
    digest = hashlib.sha256()
    for sample_id, content in sorted(rows):
        if "\t" in sample_id or "\n" in sample_id:
            raise ValueError(f"sample_id {sample_id!r} contains a tab or newline; it cannot be serialised")
        digest.update(f"{sample_id}\t{content}\n".encode())
    return digest.hexdigest()

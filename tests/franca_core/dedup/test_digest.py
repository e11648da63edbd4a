"""Dataset digest: sha256 of the sorted (sample_id, content_hash) rows (franca_core/dedup/digest.py)."""

from __future__ import annotations

import hashlib

import pytest

from franca_core.dedup.digest import dataset_digest


def test_dataset_digest__documented_serialisation_and_order_independent() -> None:
    rows = [("b", "22"), ("a", "11")]
    expected = hashlib.sha256(b"a\t11\nb\t22\n").hexdigest()  # the serialisation the module docstring states
    assert dataset_digest(rows) == dataset_digest(reversed(rows)) == expected
    assert dataset_digest(rows[:1]) != expected


def test_dataset_digest__rejects_ids_that_break_the_format() -> None:
    with pytest.raises(ValueError, match="tab or newline"):
        dataset_digest([("a\tb", "1")])

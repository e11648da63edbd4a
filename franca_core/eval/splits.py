"""Pair named evaluation sets into (train, test) splits.

Sets are named ``<group>-<split>`` (``tinyimagenet-train``, ``tinyimagenet-val``, ``camvid-test``...). Within a
group the bank / fitting split is ``train`` (else ``trainval``) and the query split ``test`` (else ``val``).
A group with a single set (any name) is split in two by a deterministic permutation of its rows, so any one
labelled folder can be evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRAIN_SPLITS = ("train", "trainval")
TEST_SPLITS = ("test", "val")


@dataclass(frozen=True)
class Pair:
    """One group's split names; ``train == test`` means "split that one set by rows"."""

    group: str
    train: str
    test: str

    @property
    def self_split(self) -> bool:
        return self.train == self.test


def group_of(name: str) -> tuple[str, str | None]:
    """``("camvid", "test")`` for ``camvid-test``; ``(name, None)`` when the suffix is not a known split."""
    head, sep, tail = name.rpartition("-")
    return (head, tail) if sep and head and tail in TRAIN_SPLITS + TEST_SPLITS else (name, None)


def pair_sets(names: list[str]) -> list[Pair]:
    """Group set names and pick each group's train and test split, in first-seen order."""
    groups: dict[str, dict[str | None, str]] = {}
    for name in names:
        group, split = group_of(name)
        groups.setdefault(group, {})[split] = name
    pairs = []
    for group, splits in groups.items():
        train = next((splits[s] for s in TRAIN_SPLITS if s in splits), None)
        test = next((splits[s] for s in TEST_SPLITS if s in splits), None)
        if train and test:
            pairs.append(Pair(group, train, test))
        else:  # one usable split: use it on both sides, split by rows
            only = train or test or next(iter(splits.values()))
            pairs.append(Pair(group, only, only))
    return pairs


def row_split(n: int, seed: int = 0, test_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) of a set used on both sides; each non-empty."""
    if n < 2:
        raise ValueError(f"a single evaluation set is split into train/test rows, which needs 2+ images; got {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(max(1, int(round(n * test_fraction))), n - 1)
    return np.sort(order[n_test:]), np.sort(order[:n_test])

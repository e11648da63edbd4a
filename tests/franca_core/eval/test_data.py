"""Evaluation sets: geometry, subsets, masks, and one clear error for each kind of bad input."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from franca_core.eval.data import EvalSet
from franca_core.eval.splits import pair_sets


def _png(size: tuple[int, int], mode: str = "RGB", value: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, format="PNG")
    return buf.getvalue()


def _parquet(path: Path, n: int, image_size=(40, 24), mask_size=None, labels=None) -> Path:
    cols = {"image": [_png(image_size, value=(i * 10, 0, 0)) for i in range(n)],
            "label": labels if labels is not None else [i % 2 for i in range(n)]}
    if mask_size is not None:
        cols["mask"] = [_png(mask_size, "L", i % 2) for i in range(n)]
    pq.write_table(pa.table(cols), path)
    return path


def test_eval_set__geometry_is_a_patch_multiple_and_masks_on_the_mask_grid(tmp_path: Path) -> None:
    s = EvalSet(_parquet(tmp_path / "seg-train.parquet", 5, (40, 24), (40, 24)), patch_size=8, mask_max_side=20)
    image, label, mask = s[1]
    assert image.shape == (3, 24, 40) and s.grid == (3, 5) and label == 1
    assert mask.shape == (12, 20) and int(mask.max()) == 1
    assert s.has_masks and s.has_labels


def test_eval_set__max_images_is_a_deterministic_random_subset(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "a.parquet", 20)
    a, b = EvalSet(path, 8, max_images=5, seed=3), EvalSet(path, 8, max_images=5, seed=3)
    assert list(a.rows) == list(b.rows) and len(a) == 5 and list(a.rows) != [0, 1, 2, 3, 4]


def test_eval_set__mask_of_the_wrong_size_raises_naming_the_row(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "bad.parquet", 3, (40, 24), (20, 12))
    with pytest.raises(ValueError, match=r"mask of row 0 is 20x12 but its image is 40x24"):
        EvalSet(path, 8)


def test_eval_set__empty_set_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is empty"):
        EvalSet(_parquet(tmp_path / "empty.parquet", 0), 8)
    (tmp_path / "folder" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="is empty"):
        EvalSet(tmp_path / "folder", 8)


def test_eval_set__image_folder_layout(tmp_path: Path) -> None:
    for c in ("cat", "dog"):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "f" / c / f"{i}.png").write_bytes(_png((16, 16)))
    s = EvalSet(tmp_path / "f", 8)
    assert len(s) == 4 and s.label_classes == ["cat", "dog"] and list(s.labels) == [0, 0, 1, 1]
    assert not s.has_masks and s[0][2].numel() == 0


def test_eval_set__unlabelled_rows_mean_no_labels(tmp_path: Path) -> None:
    s = EvalSet(_parquet(tmp_path / "u.parquet", 4, labels=[-1] * 4), 8)
    assert not s.has_labels and np.all(s.labels == -1)


def test_pair_sets__splits_pair_by_group_and_single_sets_split_by_rows() -> None:
    pairs = pair_sets(["camvid-train", "camvid-val", "camvid-test", "tinyimagenet-train", "tinyimagenet-val", "mine"])
    by_group = {p.group: p for p in pairs}
    assert (by_group["camvid"].train, by_group["camvid"].test) == ("camvid-train", "camvid-test")
    assert (by_group["tinyimagenet"].train, by_group["tinyimagenet"].test) == ("tinyimagenet-train",
                                                                              "tinyimagenet-val")
    assert by_group["mine"].self_split

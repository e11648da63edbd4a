"""``python -m tasks.img2dataset_run SPEC.json``: one ``img2dataset.download`` call in its own process.

The download stage runs img2dataset in a child process so that a killed download leaves only finished shards
(``*_stats.json``) and unfinished files that img2dataset's incremental mode redoes on the next run. The spec is
the keyword arguments of ``img2dataset.download`` plus ``max_image_pixels``.

Every payload goes through ``SniffingResizer``, which classifies it (non-image, decompression bomb, corrupt) from its
header before img2dataset's resizer lets OpenCV decode it; the cause is the prefix of the row's ``error_message``
(``quality.download_cause``).

With ``processes_count > 1`` this calls ``img2dataset.download`` (its spawn pool and logger process), swapping the
``Resizer`` class it looks up for a factory of the wrapped one. With one process it drives the same img2dataset
components (``Reader``, ``Downloader``, ``Resizer``, ``WebDatasetSampleWriter``, the same incremental rule: a shard
is done when its ``_stats.json`` exists) in this process: the pool and the logger would each start an interpreter
importing img2dataset (and torch through webdataset), seconds of fixed cost on a small machine.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import sys
from functools import partial
from typing import Any

from franca_core.dedup.quality import CORRUPT, classify_payload

Result = tuple[Any, Any, Any, Any, Any, Any]  # img2dataset's (img, width, height, orig_w, orig_h, error)


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


def _make_resizer(resizer_cls: type, max_pixels: int, **kwargs: Any) -> SniffingResizer:
    return SniffingResizer(resizer_cls(**kwargs), max_pixels)


def run_in_process(spec: dict[str, Any], max_pixels: int) -> None:
    """``img2dataset.download`` for one process, without its pool and logger (see module docstring)."""
    import fsspec
    from img2dataset.downloader import Downloader
    from img2dataset.reader import Reader
    from img2dataset.resizer import Resizer
    from img2dataset.writer import WebDatasetSampleWriter

    out = spec["output_folder"]
    fs, out_path = fsspec.core.url_to_fs(out)
    fs.makedirs(out_path, exist_ok=True)
    done = {int(p.rsplit("/", 1)[-1].split("_")[0]) for p in fs.glob(f"{out_path}/*_stats.json")}
    tmp = f"{out}/_tmp"
    fs.makedirs(f"{out_path}/_tmp", exist_ok=True)
    reader = Reader(spec["url_list"], spec["input_format"], spec["url_col"], spec["caption_col"], None, None,
                    spec["save_additional_columns"], spec["number_sample_per_shard"], done, tmp)
    resizer = SniffingResizer(Resizer(
        image_size=spec["image_size"], resize_mode=spec["resize_mode"],
        resize_only_if_bigger=spec["resize_only_if_bigger"], encode_quality=spec["encode_quality"],
        encode_format=spec["encode_format"], skip_reencode=spec.get("skip_reencode", False)), max_pixels)
    downloader = Downloader(
        sample_writer_class=WebDatasetSampleWriter, resizer=resizer, thread_count=spec["thread_count"],
        save_caption=True, extract_exif=spec["extract_exif"], output_folder=out, column_list=reader.column_list,
        timeout=spec["timeout"], number_sample_per_shard=spec["number_sample_per_shard"], oom_shard_count=5,
        compute_hash=spec["compute_hash"], verify_hash_type=None, encode_format=spec["encode_format"],
        retries=spec["retries"], user_agent_token=None, disallowed_header_directives=None)
    failed = [row for row in reader if not downloader(row)[0]]
    for _ in range(spec["max_shard_retry"]):  # img2dataset's retrier: failed shards once more
        failed = [row for row in failed if not downloader(row)[0]]
    if fs.exists(f"{out_path}/_tmp"):
        fs.rm(f"{out_path}/_tmp", recursive=True)


def main(spec_path: str) -> int:
    """Run the download described by ``spec_path``."""
    from infra.offline import apply_offline_env

    apply_offline_env()  # before img2dataset imports albumentations, which checks PyPI for updates otherwise
    with open(spec_path) as f:
        spec: dict[str, Any] = json.load(f)
    max_pixels = int(spec.pop("max_image_pixels"))
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(max_pixels))  # OpenCV's own guard, defence in depth
    if spec["processes_count"] == 1:
        run_in_process(spec, max_pixels)
        return 0
    # the module, not the ``main`` function that img2dataset/__init__.py re-exports under the same name
    i2d_main = importlib.import_module("img2dataset.main")
    i2d_main.Resizer = partial(_make_resizer, i2d_main.Resizer, max_pixels)
    i2d_main.download(**spec)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

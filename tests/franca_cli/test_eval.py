"""``franca eval``: a report from a checkpoint and image sets, and one line naming the cause for bad input."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from franca_cli.main import main
from franca_core.checkpoint import save_checkpoint
from franca_core.config import load_config
from franca_core.models.student_teacher import build_model


def _png(size: tuple[int, int], mode: str = "RGB", value: int | tuple = 0) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = load_config("tiny").train
    torch.manual_seed(0)
    model = build_model(cfg, drop_path=0.0)
    folder = tmp_path_factory.mktemp("ckpt")
    return save_checkpoint({"student": model.state_dict(), "teacher": model.state_dict(), "step": 0,
                            "config": cfg.model_dump(mode="json")}, folder / "checkpoint.pt")


def _set(path: Path, n: int, masks: bool = False, mask_size: tuple[int, int] = (32, 32)) -> Path:
    colours = [(200, 30, 30), (30, 200, 30)]
    cols = {"image": [_png((32, 32), value=colours[i % 2]) for i in range(n)], "label": [i % 2 for i in range(n)]}
    if masks:
        cols["mask"] = [_png(mask_size, "L", i % 2) for i in range(n)]
    pq.write_table(pa.table(cols), path)
    return path


def test_eval__writes_report_and_prints_results(checkpoint: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    train, test = _set(tmp_path / "toy-train.parquet", 12), _set(tmp_path / "toy-test.parquet", 8)
    rc = main(["eval", "--checkpoint", str(checkpoint), "--data", f"toy-train={train}", "--data", f"toy-test={test}",
               "--out", str(tmp_path / "out"), "--tasks", "knn,linear"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    # two flat colours: separable by the patch tokens (a random-init CLS barely sees the image: LayerScale 1e-5)
    assert out["results"]["knn"]["toy"]["patch_mean"]["10"] == 1.0
    assert (tmp_path / "out" / "report.json").is_file() and (tmp_path / "out" / "report.md").is_file()


@pytest.mark.parametrize(("case", "expected"), [
    ("mask_size", "mask of row 0 is 16x16 but its image is 32x32"),
    ("no_labels", "task 'knn' cannot run: it needs image-level labels"),
    ("architecture", "another architecture: embed_dim=192 (expected 768)"),
    ("empty", "is empty"),
])
def test_eval__bad_input_exits_2_with_one_line_naming_the_cause(case: str, expected: str, checkpoint: Path,
                                                                tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    good = _set(tmp_path / "good.parquet", 6)
    args = ["eval", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), "--data", f"a-train={good}"]
    if case == "mask_size":
        args += ["--data", f"a-test={_set(tmp_path / 'bad.parquet', 4, masks=True, mask_size=(16, 16))}"]
    elif case == "no_labels":
        pq.write_table(pa.table({"image": [_png((32, 32))] * 4, "label": [-1] * 4}), tmp_path / "u.parquet")
        args += ["--data", f"a-test={tmp_path / 'u.parquet'}", "--tasks", "knn"]
    elif case == "architecture":
        args += ["--data", f"a-test={good}", "--expect-profile", "vitb14"]
    else:
        args += ["--data", f"a-test={_set(tmp_path / 'empty.parquet', 0)}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("franca eval: error:") and expected in err[0], err

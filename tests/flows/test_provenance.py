"""Provenance that cannot lie, end to end: the real stages through ``franca run`` against a real Prefect server and a
real MLflow server, on one storage root.

The source is a LAION-style metadata Parquet on disk (not the generated default), evaluation runs on two image
folders, and each test changes one thing the way a user would (rewrite a file in place, edit a stage's code, delete
an output, truncate a marker, point at a fresh MLflow store, start two runs at once) and checks which stages were
computed again. The tests build on each other in file order (one storage root and stack for the module).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from franca_core.config import SyntheticSourceConfig
from franca_core.data.corpus import synthetic_corpus
from franca_core.data.synthetic import iter_images

_spec = importlib.util.spec_from_file_location("e2e_stack", Path(__file__).with_name("e2e_stack.py"))
e2e = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(e2e)  # type: ignore[union-attr]

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(2400)]
# Smaller than the deployment tests' runs: 2 pretraining steps; evaluation on the image folders below.
FAST = [o for o in e2e.TINY if not o.startswith("train.optim.total_steps")] + [
    "train.optim.total_steps=2", "dedup.include_eval_datasets=false", "eval.tasks=[knn]"]


def write_corpus(folder: Path, seed: int) -> Path:
    """A LAION-style metadata Parquet with its images beside it (corpus URLs are served from this folder)."""
    corpus = synthetic_corpus(SyntheticSourceConfig(n_images=100, image_size=64, seed=seed))
    for rel, body in corpus.files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(body)
    pq.write_table(corpus.metadata, folder / "metadata.parquet")
    return folder / "metadata.parquet"


def write_image_folder(folder: Path, seed: int, n: int = 24) -> Path:
    for i, (img, _, label) in enumerate(iter_images(n, seed=seed, size=64)):
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
        img.save(folder / f"c{label}" / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("provenance")
    metadata = write_corpus(root / "corpus", seed=0)
    train, val = write_image_folder(root / "probe-train", 1), write_image_folder(root / "probe-val", 2)
    config = [*FAST, f"data.source={metadata}", f"eval.datasets={{probe-train: {train}, probe-val: {val}}}",
              f"storage.root={root / 'store'}"]
    with e2e.running_stack(root) as live:
        yield {"live": live, "root": root, "metadata": metadata, "val": val, "config": config}


def computed(summary: dict[str, Any]) -> set[str]:
    return {name for name, s in summary["stages"].items() if not s["cached"]}


def stray(store: Path) -> list[str]:
    return [str(p.relative_to(store)) for p in store.rglob(".*") if p.name.startswith((".tmp-", ".work-", ".lock-"))]


@pytest.fixture(scope="module")
def first(world: dict[str, Any]) -> dict[str, Any]:
    """Two ``franca run`` of one config started together on one storage root."""
    live = world["live"]
    procs = [live.franca_run_start("--profile", "tiny", *world["config"]) for _ in range(2)]
    a, b = (live.franca_run_wait(p) for p in procs)
    return {"a": a, "b": b}


def test_two_runs_at_once__both_succeed_each_stage_computed_once(world: dict[str, Any], first: dict) -> None:
    a, b = first["a"], first["b"]
    assert {k: v["digest"] for k, v in a["stages"].items()} == {k: v["digest"] for k, v in b["stages"].items()}
    assert a["model"] == b["model"] and set(a["stages"]) == e2e.STAGES
    for stage in e2e.STAGES:  # computed by exactly one of the two, served from the store to the other
        assert [a["stages"][stage]["cached"], b["stages"][stage]["cached"]].count(False) == 1, stage
    c = world["live"].mlflow()
    exp = c.get_experiment_by_name("franca").experiment_id
    for stage in e2e.STAGES:
        runs = c.search_runs([exp], f"tags.`franca.stage` = '{stage}'")
        assert len([r for r in runs if "franca.cached_from" not in r.data.tags]) == 1, stage
    assert not stray(world["root"] / "store")


def test_rerun__every_stage_served_from_the_store(world: dict[str, Any], first: dict) -> None:
    again = world["live"].franca_run("--profile", "tiny", *world["config"])
    assert computed(again) == set() and again["model"] == first["a"]["model"]


def test_source_rewritten_in_place__every_stage_recomputes_and_lineage_names_the_new_list(
        world: dict[str, Any], first: dict) -> None:
    old = hashlib.sha256(world["metadata"].read_bytes()).hexdigest()
    write_corpus(world["metadata"].parent, seed=7)  # same path, other images
    new = hashlib.sha256(world["metadata"].read_bytes()).hexdigest()
    summary = world["live"].franca_run("--profile", "tiny", *world["config"])
    assert computed(summary) == e2e.STAGES
    assert summary["url_list_digest"] == new != old == first["a"]["url_list_digest"]
    from tasks.common import lineage

    record = lineage.trace(world["live"].mlflow(), summary["model"])
    assert record["url_list"]["sha256"] == new


def test_eval_set_changed_in_place__evaluate_and_register_recompute_nothing_before(world: dict[str, Any]) -> None:
    image = sorted(world["val"].rglob("*.png"))[0]
    next(iter_images(1, seed=99, size=64))[0].save(image)
    summary = world["live"].franca_run("--profile", "tiny", *world["config"])
    assert computed(summary) == {"evaluate", "register"}


def test_stage_code_changed__that_stage_and_those_after_it_recompute(world: dict[str, Any]) -> None:
    src = world["root"] / "src"  # the project as a user's edited checkout: the rasa stage's code changes
    for package in ("franca_core", "tasks", "infra", "flows", "franca_cli"):
        shutil.copytree(e2e.REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    rasa = src / "tasks" / "rasa.py"
    rasa.write_text(rasa.read_text().replace("start = time.perf_counter()", "start = time.perf_counter() + 0.0"))
    live = world["live"]
    env = {**live.env, "PYTHONPATH": str(src)}
    summary = live.franca_run("--profile", "tiny", *world["config"], env=env, cwd=src)
    assert computed(summary) == {"rasa", "evaluate", "register"}


def test_deleted_output_and_truncated_marker__those_stages_recompute(world: dict[str, Any]) -> None:
    live, store = world["live"], world["root"] / "store"
    before = live.franca_run("--profile", "tiny", *world["config"])
    assert computed(before) == set()  # the code is the checkout's again: its outputs are still there
    shutil.rmtree(store / "highres" / before["stages"]["highres"]["key"])
    marker = store / "evaluate" / before["stages"]["evaluate"]["key"] / "result.json"
    marker.write_text(marker.read_text()[:40])  # a crash mid-write, as an in-place write would leave it
    after = live.franca_run("--profile", "tiny", *world["config"])
    assert {"highres", "evaluate"} <= computed(after) and not {"source", "dedup", "pretrain"} & computed(after)
    assert not stray(store)


def test_fresh_mlflow_store__the_stages_recompute_no_crash(world: dict[str, Any]) -> None:
    live = world["live"]
    fresh = f"sqlite:///{world['root'] / 'fresh-mlflow.db'}"
    summary = live.franca_run("--profile", "tiny", "--until", "dedup", *world["config"],
                              f"tracking.tracking_uri={fresh}")
    assert set(summary["stages"]) == {"source", "select", "download", "dedup"}
    assert computed(summary) == {"source", "select", "download", "dedup"}
    assert "model" not in summary and os.path.exists(world["root"] / "fresh-mlflow.db")

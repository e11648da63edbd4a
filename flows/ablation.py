"""The ablation flow: which of Franca's ideas help, at equal compute (deployment ``franca/ablation``).

    prefect deployment run franca/ablation --param profile=tiny --param 'overrides=["train.optim.total_steps=300"]'
    franca bench ablation                     # the same flow on Tiny-ImageNet, the table as JSON

From one config, the data stages (source ... dedup) run once; then every variant runs as a subflow of its own,
concurrently (each wrapped in a task on the thread-pool task runner): pretrain -> rasa -> evaluate with the variant's
overrides. Variants train the same number of steps on the same data (equal compute up to the heads' own cost):

- ``franca``: the config as given (Matryoshka heads, CyclicMask, Sinkhorn-Knopp, RASA at evaluation);
- ``single_head``: one DINO and one iBOT head at the full dimension instead of the nested Matryoshka levels;
- ``no_roll``: the inverse-block mask without CyclicMask's roll;
- ``centering``: DINO's EMA centering instead of Sinkhorn-Knopp targets;
- ``no_rasa``: Franca's model evaluated without RASA (its stages are ``franca``'s, served from the store);
- ``random_init``: a row, not a run: the same backbone at random init, evaluated once with ``franca``
  (``eval.baseline``).

The variants share the cached data stages, and ``no_rasa`` shares ``franca``'s pretraining: the stage contract gives
them the same keys, and the per-key lock makes one wait for the other's output. MLflow: one ablation run, a nested
run per variant with its stage runs under it, and on the ablation run the comparison table (JSON, Markdown) and a
bar plot of k-NN top-1 with its standard error.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.full_pipeline import PIPELINE, config
from franca_core.config import ConfigError
from franca_core.eval.ablation import ablation_table, markdown_table
from franca_core.eval.plots import plot_ablation
from infra.offline import apply_offline_env
from tasks.common import prefect as stage
from tasks.common.digests import fs_of
from tasks.common.store import StageResult
from tasks.common.tracking import client, close_parent, open_parent

DATA_STAGES = ("source", "select", "download", "dedup")


@dataclass(frozen=True)
class Variant:
    """One pretraining variant: config overrides on top of the flow's, and whether evaluation applies RASA."""

    overrides: tuple[str, ...]
    rasa: bool
    note: str


# The random-init baseline is the same backbone for every variant: evaluated once, with franca (eval.baseline).
_ONE_BASELINE = ("eval.baseline=false",)
VARIANTS: dict[str, Variant] = {
    "franca": Variant((), True, "full Franca"),
    "single_head": Variant(("train.heads.n_levels=1", *_ONE_BASELINE), True,
                           "one head at D instead of the Matryoshka levels"),
    "no_roll": Variant(("train.masking.roll=false", *_ONE_BASELINE), True, "inverse-block mask without the roll"),
    "centering": Variant(("train.loss.teacher_targets=centering", *_ONE_BASELINE), True,
                         "DINO centering instead of Sinkhorn-Knopp"),
    "no_rasa": Variant((), False, "full Franca, evaluated without RASA"),
}


RANDOM_INIT_NOTE = "the same backbone at random init (the evaluation's baseline)"


@flow(name="franca-ablation-variant", log_prints=True, persist_result=False, flow_run_name="{variant}")
def ablation_variant(variant: str, profile: str, overrides: list[str], dataset: StageResult,
                     parent_run_id: str) -> dict[str, Any]:
    """Pretrain, fit RASA and evaluate one variant on the shared dataset; returns the evaluate output."""
    spec = VARIANTS[variant]
    cfg = config(profile, [*overrides, *spec.overrides], None)
    run = open_parent(cfg, str(flow_run.get_id()), f"ablation-{variant}", "ablation-variant", parent_run_id)
    try:
        model = stage.run("pretrain", cfg, run, dataset=dataset)
        rasa = stage.run("rasa", cfg, run, model=model, dataset=dataset)
        report = stage.run("evaluate", cfg, run, model=model, rasa=rasa)
    except BaseException:
        close_parent(cfg, run, ok=False)
        raise
    close_parent(cfg, run, ok=True, summary=report.stats.get("summary", {}))
    return {"evaluate": report.model_dump(mode="json"), "mlflow_run_id": run,
            "stages": {s: {"digest": r.digest, "cached": r.cached} for s, r in
                       (("pretrain", model), ("rasa", rasa), ("evaluate", report))}}


@task(name="variant", cache_policy=NO_CACHE)
def variant_task(variant: str, profile: str, overrides: list[str], dataset: StageResult,
                 parent_run_id: str) -> dict[str, Any]:
    """A variant's subflow inside a task, so that ``.submit`` runs the variants concurrently."""
    return ablation_variant(variant, profile, overrides, dataset, parent_run_id)


# Named "franca" like the full pipeline, so that its deployment is franca/ablation; its runs are named ablation-*.
@flow(name="franca", log_prints=True, persist_result=False, flow_run_name="ablation-{profile}")
def ablation(profile: str = "tiny", overrides: list[str] | None = None,
             variants: list[str] | None = None) -> dict[str, Any]:
    """Pretrain every variant at equal compute on one dataset, evaluate each, compare them in one table.

    ``variants``: a subset of ``VARIANTS`` (default: all of them).
    """
    apply_offline_env()
    overrides = overrides or []
    chosen = list(dict.fromkeys(variants or VARIANTS))
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown ablation variant(s) {unknown}. Valid: {list(VARIANTS)}")
    cfg = config(profile, overrides, None)
    parent = open_parent(cfg, str(flow_run.get_id()), flow_run.get_name() or "", "ablation")
    try:
        data: dict[str, StageResult] = {}
        for name, wiring in PIPELINE[: len(DATA_STAGES)]:
            data[name] = stage.run(name, cfg, parent, **{role: data[up] for role, up in wiring.items()})
        futures = {v: variant_task.submit(v, profile, overrides, data["dedup"], parent) for v in chosen}
        done = {v: f.result() for v, f in futures.items()}
        table = compare(cfg, parent, done, chosen)
    except BaseException:
        close_parent(cfg, parent, ok=False)
        raise
    close_parent(cfg, parent, ok=True, summary=table_metrics(table))
    return {"mlflow_run_id": parent, "dataset_digest": data["dedup"].digest, "variants": table,
            "notes": {v: VARIANTS[v].note if v in VARIANTS else RANDOM_INIT_NOTE for v in table},
            "runs": {v: {"mlflow_run_id": d["mlflow_run_id"], "stages": d["stages"]} for v, d in done.items()}}


def table_metrics(table: dict[str, Any]) -> dict[str, float]:
    """``{"ablation.<variant>.<figure>": value}`` under MLflow's metric-name rules (letters, digits, _ - . / and
    spaces: ``pck@0.05`` becomes ``pck_0.05``)."""
    return {re.sub(r"[^\w\-./ ]", "_", f"ablation.{v}.{m}"): fig["value"]
            for v, figs in table.items() for m, fig in figs.items()}


def baseline_report(report: dict[str, Any]) -> dict[str, Any]:
    """A report whose results are ``report``'s random-init baseline (same sets and pairs)."""
    return {**report, "results": report["baseline"]}


def compare(cfg: Any, parent: str, done: dict[str, dict[str, Any]], chosen: list[str]) -> dict[str, Any]:
    """The comparison table from each variant's report; logged to the ablation run as JSON, Markdown and a PNG."""
    reports = {}
    for v in chosen:
        result = StageResult.model_validate(done[v]["evaluate"])
        fs, path = fs_of(result.files["json"])
        with fs.open(path) as f:
            reports[v] = (json.load(f), VARIANTS[v].rasa)
    table = ablation_table(reports, cfg.eval.seed)
    notes = {v: VARIANTS[v].note for v in chosen}
    with_baseline = next((r for r, _ in reports.values() if r.get("baseline")), None)
    if with_baseline is not None:  # same backbone architecture in every variant: one random-init row
        table["random_init"] = ablation_table({"random_init": (baseline_report(with_baseline), False)},
                                              cfg.eval.seed)["random_init"]
        notes["random_init"] = RANDOM_INIT_NOTE
    markdown = "# Ablation at equal compute\n\n" + markdown_table(table, notes)
    get_run_logger().info(markdown)
    c = client(cfg)
    c.log_dict(parent, {"variants": table, "notes": notes}, "ablation/ablation.json")
    c.log_text(parent, markdown, "ablation/ablation.md")
    knn = next((m for m in next(iter(table.values()), {}) if m.startswith("knn_top1.")), None)
    if knn is not None:
        with tempfile.TemporaryDirectory() as tmp:
            c.log_artifact(parent, str(plot_ablation(table, knn, Path(tmp) / "ablation_knn.png")), "ablation")
    return table

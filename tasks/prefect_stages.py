"""The pipeline's Prefect tasks: one thin wrapper per stage around its plain function, plus the flow-side callers.

A task: open the stage's MLflow run (params, inputs) -> call the plain stage function -> log its result -> return
``Tracked``. Retries, caching and persistence are in ``@task``; the cache key is the stage's config sections plus
its inputs' digests (``stage_runner.StageInputs``). Stage modules are imported inside the tasks, so deploying the
flow does not import torch or Ray. The flow calls the lower-case functions at the bottom, which add the configured
retries and record cache hits in MLflow.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from franca_core.config import PipelineConfig
from tasks.stage_runner import Tracked, cache_policy, call, stage_run

# The config sections each stage's output depends on: its MLflow params and its part of the cache key. They must
# cover everything the stage function reads from the config (its own input digest may cover more).
SECTIONS: dict[str, tuple[str, ...]] = {
    "source": ("data.source", "data.synthetic"),
    "select": ("data.select",),
    "download": ("data.download",),
    "dedup": ("dedup", "eval.datasets"),
    "pretrain": ("train",),
    "rasa": ("rasa",),
    "highres": ("highres", "train"),
    "evaluate": ("eval",),
    "register": ("profile", "tracking.registered_model_prefix", "tracking.alias"),
}
_OPTS = {"persist_result": True, "log_prints": True}


@task(name="source", cache_policy=cache_policy(*SECTIONS["source"]), **_OPTS)
def source_task(cfg: PipelineConfig, parent_run_id: str) -> Tracked:
    """Produce the URL list: the generated LAION-style corpus (or a given metadata Parquet) and its sha256."""
    from tasks.source import source

    with stage_run("source", SECTIONS["source"], cfg, parent_run_id, {}) as run:
        return run.done(source(cfg))


@task(name="select", cache_policy=cache_policy(*SECTIONS["select"]), **_OPTS)
def select_task(cfg: PipelineConfig, urls: Tracked, parent_run_id: str) -> Tracked:
    """Filter and sample the URL list into the subset Parquet."""
    from tasks.select_subset import select

    with stage_run("select", SECTIONS["select"], cfg, parent_run_id, {"urls": urls}) as run:
        return run.done(select(cfg, urls.result))


@task(name="download", cache_policy=cache_policy(*SECTIONS["download"]), **_OPTS)
def download_task(cfg: PipelineConfig, subset: Tracked, parent_run_id: str) -> Tracked:
    """Download the subset with img2dataset into webdataset shards; failed URLs are counted by cause."""
    from tasks.download import download

    with stage_run("download", SECTIONS["download"], cfg, parent_run_id, {"subset": subset}) as run:
        return run.done(download(cfg, subset.result))


@task(name="dedup", cache_policy=cache_policy(*SECTIONS["dedup"]), **_OPTS)
def dedup_task(cfg: PipelineConfig, shards: Tracked, parent_run_id: str) -> Tracked:
    """Remove exact and near duplicates and evaluation-set contamination; the manifest digest names the dataset."""
    from tasks.dedup import dedup, eval_set_paths

    files = {f"decontaminate:{Path(p).name}": p for p in eval_set_paths(cfg)}
    with stage_run("dedup", SECTIONS["dedup"], cfg, parent_run_id, {"shards": shards}, files) as run:
        return run.done(dedup(cfg, shards.result))


@task(name="pretrain", cache_policy=cache_policy(*SECTIONS["pretrain"]), **_OPTS)
def pretrain_task(cfg: PipelineConfig, dataset: Tracked, parent_run_id: str) -> Tracked:
    """Pretrain the backbone with Ray Train on the deduplicated shards, resuming from the latest checkpoint."""
    from tasks.pretrain import pretrain

    with stage_run("pretrain", SECTIONS["pretrain"], cfg, parent_run_id, {"dataset": dataset}) as run:
        return run.done(pretrain(cfg, dataset.result))


@task(name="rasa", cache_policy=cache_policy(*SECTIONS["rasa"]), **_OPTS)
def rasa_task(cfg: PipelineConfig, model: Tracked, dataset: Tracked, parent_run_id: str) -> Tracked:
    """Fit the RASA projection that removes positional directions from the final backbone's patch tokens."""
    from tasks.fit_rasa import fit_rasa

    with stage_run("rasa", SECTIONS["rasa"], cfg, parent_run_id, {"model": model, "dataset": dataset}) as run:
        return run.done(fit_rasa(cfg, model.result, dataset.result))


@task(name="highres", cache_policy=cache_policy(*SECTIONS["highres"]), **_OPTS)
def highres_task(cfg: PipelineConfig, model: Tracked, dataset: Tracked, parent_run_id: str) -> Tracked:
    """Resize the position embeddings and continue training briefly at the higher resolution."""
    from tasks.adapt_highres import adapt_highres

    with stage_run("highres", SECTIONS["highres"], cfg, parent_run_id, {"model": model, "dataset": dataset}) as run:
        return run.done(adapt_highres(cfg, model.result, dataset.result))


@task(name="evaluate", cache_policy=cache_policy(*SECTIONS["evaluate"]), **_OPTS)
def evaluate_task(cfg: PipelineConfig, model: Tracked, rasa: Tracked, parent_run_id: str) -> Tracked:
    """Run the evaluation protocols; metrics, report and plots go to MLflow."""
    from tasks.evaluate import evaluate

    files = {f"eval:{name}": path for name, path in cfg.eval.datasets.items()}  # the labelled sets it reads
    with stage_run("evaluate", SECTIONS["evaluate"], cfg, parent_run_id, {"model": model, "rasa": rasa},
                   files) as run:
        return run.done(evaluate(cfg, model.result, rasa.result))


@task(name="register", cache_policy=cache_policy(*SECTIONS["register"]), **_OPTS)
def register_task(cfg: PipelineConfig, model: Tracked, rasa: Tracked, report: Tracked, dataset: Tracked,
                  parent_run_id: str) -> Tracked:
    """Register backbone + RASA as ``<prefix>-<profile>`` with the configured alias and lineage tags."""
    from tasks.register import register

    inputs = {"model": model, "rasa": rasa, "report": report, "dataset": dataset}
    with stage_run("register", SECTIONS["register"], cfg, parent_run_id, inputs) as run:
        return run.done(register(cfg, run.run_id, parent_run_id, inputs))


# ------------------------------------------------------------------------------------------ flow-side calls
def source(cfg: PipelineConfig, parent: str) -> Tracked:
    return call(source_task, cfg, parent)


def select(cfg: PipelineConfig, urls: Tracked, parent: str) -> Tracked:
    return call(select_task, cfg, parent, urls=urls)


def download(cfg: PipelineConfig, subset: Tracked, parent: str) -> Tracked:
    return call(download_task, cfg, parent, retried=True, subset=subset)


def dedup(cfg: PipelineConfig, shards: Tracked, parent: str) -> Tracked:
    return call(dedup_task, cfg, parent, shards=shards)


def pretrain(cfg: PipelineConfig, dataset: Tracked, parent: str) -> Tracked:
    return call(pretrain_task, cfg, parent, retried=True, dataset=dataset)


def fit_rasa(cfg: PipelineConfig, model: Tracked, dataset: Tracked, parent: str) -> Tracked:
    return call(rasa_task, cfg, parent, model=model, dataset=dataset)


def adapt_highres(cfg: PipelineConfig, model: Tracked, dataset: Tracked, parent: str) -> Tracked:
    return call(highres_task, cfg, parent, model=model, dataset=dataset)


def evaluate(cfg: PipelineConfig, model: Tracked, rasa: Tracked, parent: str) -> Tracked:
    return call(evaluate_task, cfg, parent, model=model, rasa=rasa)


def register(cfg: PipelineConfig, model: Tracked, rasa: Tracked, report: Tracked, dataset: Tracked,
             parent: str) -> Tracked:
    return call(register_task, cfg, parent, model=model, rasa=rasa, report=report, dataset=dataset)

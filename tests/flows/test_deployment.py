"""End to end, as users run it: ``franca stack up``, ``prefect deploy --all``, ``prefect deployment run
franca/full-pipeline`` with the real stages on a tiny generated corpus, then MLflow, ``franca lineage`` and resume.

One stack (Prefect server + process worker + MLflow server on free ports, state in a temporary folder) serves the
module and is always torn down. The runs are sized to minutes on 2 cores: ~100 images, a handful of training steps,
one Ray worker, a tiny evaluation.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Loaded by path: the test suite runs in importlib mode, where test folders are not on sys.path.
_spec = importlib.util.spec_from_file_location("e2e_stack", Path(__file__).with_name("e2e_stack.py"))
e2e = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(e2e)  # type: ignore[union-attr]
Stack, STAGES, TINY = e2e.Stack, e2e.STAGES, e2e.TINY

# Each test waits for real flow runs (Ray start-up, training steps): minutes each on a shared 2-core box.
pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(2400)]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with e2e.running_stack(tmp_path_factory.mktemp("e2e")) as live:
        live.cli("prefect", "--no-prompt", "deploy", "--all")
        yield live


def test_invalid_config__fails_fast_with_the_error_in_the_flow_run_logs(live: Stack) -> None:
    t0 = time.monotonic()
    flow_run_id = live.run_pipeline(["train.optim.base_lr=-1"], timeout=300)
    assert live.flow_run(flow_run_id).state.is_failed()
    assert "config key 'train.optim.base_lr': Input should be greater than 0" in live.logs(flow_run_id)
    assert not live.store.exists()  # nothing written
    c = live.mlflow()
    exp = c.get_experiment_by_name("franca")
    assert exp is None or not c.search_runs([exp.experiment_id])
    assert time.monotonic() - t0 < 240


def test_resume__a_failed_run_retried_skips_finished_stages_and_continues_training(live: Stack) -> None:
    # Operational settings only: the pretrain output (and digest) is the clean run's, which then reuses it.
    failing = [*TINY, "train.fail_once_at_step=3", "train.max_failures=0", "tracking.stage_retries=0"]
    flow_run_id = live.run_pipeline(failing)
    assert live.flow_run(flow_run_id).state.is_failed()
    _, children = live.pipeline_run(flow_run_id)
    assert [r.info.status for r in children["pretrain"]] == ["FAILED"]
    assert "rasa" not in children
    live.cli("prefect", "flow-run", "retry", flow_run_id, timeout=120)
    fr = live.wait(flow_run_id, 1200, since_attempt=1)
    assert fr.state.is_completed(), live.logs(flow_run_id)
    _, children = live.pipeline_run(flow_run_id)
    states = live.task_states(flow_run_id)
    for stage in ("source", "select", "download", "dedup"):  # finished before the failure: not run again
        assert len(children[stage]) == 1 and states[stage][-1] == "Cached", (stage, states)
    assert [r.info.status for r in children["pretrain"]] == ["FAILED", "FINISHED"]
    finished = children["pretrain"][-1]
    assert finished.data.metrics["resumed_from"] == 2  # the checkpoint of step 2, not step 0
    assert finished.data.metrics["steps"] == 4
    assert set(children) == STAGES


@pytest.fixture(scope="module")
def first(live: Stack) -> str:
    """The clean run. After the resume test in file order it differs from that run in operational settings only, so
    every stage is served from that run's outputs (stubs naming the runs that computed them)."""
    flow_run_id = live.run_pipeline(TINY)
    fr = live.flow_run(flow_run_id)
    assert fr.state.is_completed(), live.logs(flow_run_id)
    return flow_run_id


def test_deployment_run__one_parent_one_child_per_stage_and_a_candidate_model(live: Stack, first: str) -> None:
    parent, children = live.pipeline_run(first)
    assert parent.info.status == "FINISHED"
    assert {"franca.git_commit", "franca.config_digest", "franca.profile"} <= set(parent.data.tags)
    assert set(children) == STAGES and all(len(v) == 1 for v in children.values())
    assert all(v[0].info.status == "FINISHED" for v in children.values())
    pretrain = children["pretrain"][0]
    (dataset,) = pretrain.inputs.dataset_inputs
    assert len(dataset.dataset.digest) == 32 and len({t.key: t.value for t in dataset.tags}["sha256"]) == 64
    c = live.mlflow()
    version = c.get_model_version_by_alias("franca-tiny", "candidate")
    register = children["register"][0]
    computed_by = register.data.tags.get("franca.cached_from", register.info.run_id)
    assert version.run_id == computed_by
    assert version.tags["franca.pipeline_run_id"] == c.get_run(computed_by).data.tags["mlflow.parentRunId"]
    assert {"model/franca_model.json"} <= {a.path for a in c.list_artifacts(version.run_id, "model")}


def test_training_telemetry__live_metrics_monitors_loss_curve_and_the_training_view(live: Stack, first: str) -> None:
    """The training stages' own runs (the resume test's, or ``first``'s when run alone) carry per-step metrics logged
    while they trained, the collapse monitors, system metrics and a loss PNG; the experiment opens in the UI's
    model-training view."""
    c = live.mlflow()
    exp = c.get_experiment_by_name("franca")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    for stage in ("pretrain", "highres"):
        runs = [r for r in c.search_runs([exp.experiment_id], f"tags.`franca.stage` = '{stage}' and "
                                         "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"])
                if "franca.cached_from" not in r.data.tags]
        run = runs[0]
        keys = ("train/loss", "train/dino", "train/images_per_s", "train/lr", "train/teacher_temp", "train/eta_s",
                "monitor/rankme", "monitor/knn_view_top1")
        history = {k: c.get_metric_history(run.info.run_id, k) for k in keys}
        assert all(len(h) > 1 for h in history.values()), (stage, {k: len(h) for k, h in history.items()})
        loss = sorted(history["train/loss"], key=lambda m: m.step)
        assert loss[-1].step == run.data.metrics["steps"] and loss[0].timestamp < loss[-1].timestamp, stage  # live
        assert all(1.0 <= m.value <= run.data.metrics["monitor/rankme_max"] for m in history["monitor/rankme"])
        assert all(0.0 <= m.value <= 1.0 for m in history["monitor/knn_view_top1"])
        assert any(k.startswith("system/") for k in run.data.metrics), sorted(run.data.metrics)
        assert "loss_curve.png" in {a.path for a in c.list_artifacts(run.info.run_id)}, stage


def test_changing_only_an_eval_setting__reruns_only_evaluate_and_register(live: Stack, first: str) -> None:
    flow_run_id = live.run_pipeline([*TINY, "eval.knn_k=[5]"])
    assert live.flow_run(flow_run_id).state.is_completed(), live.logs(flow_run_id)
    states = live.task_states(flow_run_id)
    ran = {name for name, s in states.items() if s[-1] != "Cached"}
    assert ran == {"evaluate", "register"}, states
    _, children = live.pipeline_run(flow_run_id)
    fresh = {s for s, runs in children.items() if "franca.cached_from" not in runs[-1].data.tags}
    assert fresh == {"evaluate", "register"}


def test_lineage__reaches_the_url_list_and_verify_fails_after_an_artifact_changes(
        live: Stack, first: str, capsys: pytest.CaptureFixture[str]) -> None:
    from franca_cli.main import main  # in-process: the CLI's start-up (torch imports) once, not per call

    def lineage(*args: str) -> tuple[int, str]:
        code = main(["lineage", "models:/franca-tiny/1", *args, "--tracking-uri", live.settings.mlflow_uri])
        return code, capsys.readouterr().out

    code, out = lineage("--json")
    record = json.loads(out)
    _, children = live.pipeline_run(first)
    assert code == 0 and record["url_list"]["sha256"] == children["source"][0].data.tags["franca.output_digest"]
    assert [s["stage"] for s in record["stages"]][-1] == "source"
    code, text = lineage("--verify")
    assert code == 0 and "URL list sha256" in text and ", 0 changed" in text, text
    subset = Path(record["stages"][-2]["output_uri"]) / "subset.parquet"  # the select stage's output
    subset.write_bytes(subset.read_bytes() + b"tampered")
    code, text = lineage("--verify")
    assert code == 1 and "CHANGED   select/subset" in text, text


# The MLflow UI's own controls, as a user clicks them (cosmetic: what the screenshots show).
UI_MODEL_TRAINING = """(() => { const t = [...document.querySelectorAll('div[role=button]')]
  .find(d => d.innerText.trim() === 'Model training'); if (t) t.click(); return Boolean(t); })()"""
UI_CLOSE_ASSISTANT = "document.querySelector('[data-component-id=\"mlflow.assistant.chat_panel.close\"]')?.click()"
# The run page's train/loss chart: typed into the page's "Search metric charts" box (the UI draws a chart only once
# it scrolls into view, and the train section holds two dozen); then the most vertices of a line plotted in that
# chart's card (plotly drops collinear ones; a single logged point draws no line), 0 until there are two.
UI_LOSS_LINE = """(() => {
  const title = [...document.querySelectorAll('h4[title]')].find(h => h.title === 'train/loss');
  if (!title) {
    const search = document.querySelector('input[placeholder="Search metric charts"]');
    if (search && search.value !== 'train/loss') {
      Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(search, 'train/loss');
      search.dispatchEvent(new Event('input', {bubbles: true}));
    }
    return 0;
  }
  let card = title;
  while (card.parentElement && !card.querySelector('path.js-line')
         && card.parentElement.querySelectorAll('h4[title]').length === 1) card = card.parentElement;
  const lines = [...card.querySelectorAll('path.js-line')];
  const most = Math.max(0, ...lines.map(p => (p.getAttribute('d').match(/[ML]/g) || []).length));
  return most > 1 ? most : 0;
})()"""


def test_mlflow_ui__in_chromium_shows_the_lineage_tags_and_the_pretrain_loss_history(live: Stack, first: str,
                                                                                      tmp_path: Path) -> None:
    """What a user sees in the MLflow UI, in a real browser (headless Chromium, ``make chromium``): the candidate
    version's page lists its lineage tags, and the run that pretrained it (followed through the lineage) draws its
    train/loss history as a line. ``FRANCA_UI_SCREENSHOTS=DIR`` keeps the screenshots (the README's come from here).
    """
    from infra.browser import Browser
    from infra.offline import CHROMIUM_BINARIES
    from tasks.common import lineage, tracking

    if not any(shutil.which(b) for b in CHROMIUM_BINARIES):
        pytest.skip("no Chromium: `make chromium` installs Debian's (make test does)")
    c = live.mlflow()
    version = c.get_model_version_by_alias("franca-tiny", "candidate")
    tags = {k: v for k, v in version.tags.items() if k.startswith("franca.")}
    assert {"franca.dataset_digest", "franca.model_digest", "franca.pipeline_run_id"} <= set(tags), tags
    stages = {s["stage"]: s for s in lineage.trace(c, f"models:/franca-tiny/{version.version}")["stages"]}
    pretrain = c.get_run(stages["pretrain"]["computed_by_run_id"])
    assert len({m.step for m in c.get_metric_history(pretrain.info.run_id, "train/loss")}) > 1  # what the UI reads
    shots = Path(os.environ.get("FRANCA_UI_SCREENSHOTS") or tmp_path)
    model_page = f"{live.settings.mlflow_uri}/#/models/franca-tiny/versions/{version.version}"
    digest = tags["franca.dataset_digest"]
    parent = c.get_run(pretrain.data.tags["mlflow.parentRunId"])
    with Browser(height=1000) as b:
        # A fresh browser, as a user's first click on the link franca demo prints: the experiment's runs table (the
        # model-training view), not the GenAI overview the UI falls back to.
        b.open(tracking.ui_url(live.settings.mlflow_uri, pretrain.info.experiment_id))
        b.wait(f"document.body.innerText.includes({json.dumps(parent.info.run_name)})",
               what=f"the flow run {parent.info.run_name} in the runs table")
        assert "genai" not in b.evaluate("location.hash")
        b.open(model_page)
        b.wait(f"document.body.innerText.includes({json.dumps(digest)})", what=f"the dataset digest {digest}")
        b.evaluate(UI_MODEL_TRAINING)
        b.open(model_page)
        b.wait(f"document.body.innerText.includes({json.dumps(digest)})", what=f"the dataset digest {digest}")
        text = b.text()
        assert all(k in text and v in text for k, v in tags.items()), (tags, text[:3000])
        b.evaluate(UI_CLOSE_ASSISTANT)
        b.screenshot(shots / "mlflow-model-lineage.png")
        b.open(f"{live.settings.mlflow_uri}/#/experiments/{pretrain.info.experiment_id}/runs/"
               f"{pretrain.info.run_id}/model-metrics")
        assert b.wait(UI_LOSS_LINE, what="a train/loss chart with a line through more than one point") > 1
        b.evaluate(UI_CLOSE_ASSISTANT)
        b.screenshot(shots / "mlflow-pretrain-loss.png")
    assert (shots / "mlflow-model-lineage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

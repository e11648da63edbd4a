"""End to end, as users run it: ``franca stack up``, ``prefect deploy --all``, ``prefect deployment run
franca/full-pipeline`` with the real stages on a tiny generated corpus, then MLflow, ``franca lineage`` and resume.

One stack (Prefect server + process worker + MLflow server on free ports, state in a temporary folder) serves the
module and is always torn down. The runs are sized to minutes on 2 cores: ~100 images, a handful of training steps,
one Ray worker, a tiny evaluation.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra import stack

# Each test waits for real flow runs (Ray start-up, training steps): minutes each on a shared 2-core box.
pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STAGES = {"source", "select", "download", "dedup", "pretrain", "rasa", "highres", "evaluate", "register"}
TINY = [
    "data.synthetic.n_images=100", "data.download.shard_size=50", "data.download.threads=8",
    "train.optim.batch_size=8", "train.optim.total_steps=4", "train.optim.warmup_steps=1",
    "train.optim.freeze_last_layer_steps=1", "train.loss.teacher_temp_warmup_steps=2", "train.checkpoint_every=2",
    "train.log_every=1", "train.loader_workers=0",
    "rasa.rounds=2", "rasa.epochs=1", "rasa.max_images=32", "rasa.batch_size=16",
    "highres.steps=2", "highres.warmup_steps=1", "highres.max_images=32", "highres.batch_size=8",
    "eval.max_images=48", "eval.batch_size=32", "eval.knn_k=[5,10]", "eval.overcluster_factors=[1]",
    "eval.kmeans_max_tokens=4000", "eval.incontext_bank_size=2000", "eval.figure_images=1",
]


class Stack:
    """The running stack of this module and the commands a user types against it."""

    def __init__(self, settings: stack.StackSettings, root: Path) -> None:
        self.settings, self.root = settings, root
        self.env = {**os.environ, **settings.client_env()}
        self.store = root / "store"

    def cli(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(BIN / args[0]), *args[1:]], cwd=REPO, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                                 f"{proc.stderr[-3000:]}")
        return proc

    def run_pipeline(self, overrides: list[str], timeout: float = 1200) -> str:
        """``prefect deployment run franca/full-pipeline`` and wait; returns the flow run id."""
        params = json.dumps([*overrides, f"storage.root={self.store}"])
        out = self.cli("prefect", "deployment", "run", "franca/full-pipeline", "--param", "profile=tiny",
                       "--param", f"overrides={params}", timeout=60).stdout
        flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)  # type: ignore[union-attr]
        self.wait(flow_run_id, timeout)
        return flow_run_id

    def flow_run(self, flow_run_id: str) -> Any:
        with stack.prefect_client(self.settings.prefect_api_url) as client:
            return client.read_flow_run(flow_run_id)

    def wait(self, flow_run_id: str, timeout: float, since_attempt: int = 0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fr = self.flow_run(flow_run_id)
            if fr.state.is_final() and fr.run_count > since_attempt:
                return fr
            time.sleep(3)
        raise AssertionError(f"flow run {flow_run_id} did not finish in {timeout} s:\n{self.logs(flow_run_id)}")

    def logs(self, flow_run_id: str) -> str:
        return self.cli("prefect", "flow-run", "logs", flow_run_id, check=False, timeout=120).stdout

    def task_states(self, flow_run_id: str) -> dict[str, list[str]]:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        with stack.prefect_client(self.settings.prefect_api_url) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        states: dict[str, list[str]] = {}
        for tr in sorted(runs, key=lambda r: r.expected_start_time or r.created):
            states.setdefault(tr.name.rsplit("-", 1)[0], []).append(tr.state.name)
        return states

    def mlflow(self) -> Any:
        import mlflow

        mlflow.set_tracking_uri(self.settings.mlflow_uri)
        return mlflow.MlflowClient(self.settings.mlflow_uri)

    def pipeline_run(self, flow_run_id: str) -> tuple[Any, dict[str, list[Any]]]:
        """The MLflow parent run of a flow run and its children by stage (oldest first)."""
        c = self.mlflow()
        exp = c.get_experiment_by_name("franca").experiment_id
        (parent,) = c.search_runs([exp], f"tags.`franca.flow_run_id` = '{flow_run_id}'")
        children: dict[str, list[Any]] = {}
        for r in c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                               order_by=["attributes.start_time ASC"]):
            children.setdefault(r.data.tags["franca.stage"], []).append(r)
        return parent, children


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("e2e")
    settings = stack.StackSettings(state=root / "state" / "stack", prefect_port=stack.free_port(),
                                   mlflow_port=stack.free_port())
    try:
        stack.up(settings, timeout=300, log=lambda _: None)
        live = Stack(settings, root)
        os.environ.update({k: v for k, v in settings.client_env().items() if k.startswith(("PREFECT_", "MLFLOW_"))})
        live.cli("prefect", "--no-prompt", "deploy", "--all")
        yield live
    finally:
        stack.down(settings, log=lambda _: None)
        for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_LOCAL_STORAGE_PATH"):
            os.environ.pop(key, None)


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
    """The clean run (after the resume test in file order, it reuses that run's data and pretraining outputs)."""
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
    assert version.run_id == children["register"][0].info.run_id
    assert version.tags["franca.pipeline_run_id"] == parent.info.run_id
    assert {"model/franca_model.json"} <= {a.path for a in c.list_artifacts(version.run_id, "model")}


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

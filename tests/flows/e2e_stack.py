"""What the end-to-end flow tests share: a real stack (Prefect server + worker + MLflow server) and the commands a
user types against it, and a run config sized to minutes on 2 cores (~100 images, a handful of training steps, one
Ray worker, a tiny evaluation)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from infra import stack

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

    def run_pipeline(self, overrides: list[str], timeout: float = 1200, deployment: str = "franca/full-pipeline",
                     *params: str) -> str:
        """``prefect deployment run DEPLOYMENT`` (extra ``--param`` values in ``params``) and wait; returns the flow
        run id."""
        overrides_json = json.dumps([*overrides, f"storage.root={self.store}"])
        extra = [a for p in params for a in ("--param", p)]
        out = self.cli("prefect", "deployment", "run", deployment, "--param", "profile=tiny",
                       "--param", f"overrides={overrides_json}", *extra, timeout=60).stdout
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

    def franca_run(self, *args: str, env: dict[str, str] | None = None, cwd: Path = REPO,
                   timeout: float = 1200) -> dict[str, Any]:
        """``franca run ARGS`` against the stack (a process of its own); returns the printed summary."""
        proc = self.franca_run_start(*args, env=env, cwd=cwd)
        return self.franca_run_wait(proc, timeout)

    def franca_run_start(self, *args: str, env: dict[str, str] | None = None,
                         cwd: Path = REPO) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "franca_cli.main", "run", *args], cwd=cwd,
                                env=env or self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    @staticmethod
    def franca_run_wait(proc: subprocess.Popen[str], timeout: float = 1200) -> dict[str, Any]:
        out, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise AssertionError(f"franca run exited {proc.returncode}:\n{out[-3000:]}\n{err[-5000:]}")
        return json.loads(out[out.rindex("\n{\n") + 1:] if "\n{\n" in out else out[out.index("{"):])


@contextmanager
def running_stack(root: Path) -> Iterator[Stack]:
    """A stack on free ports with its state under ``root``; always torn down."""
    settings = stack.StackSettings(state=root / "state" / "stack", prefect_port=stack.free_port(),
                                   mlflow_port=stack.free_port())
    try:
        stack.up(settings, timeout=300, log=lambda _: None)
        os.environ.update({k: v for k, v in settings.client_env().items() if k.startswith(("PREFECT_", "MLFLOW_"))})
        yield Stack(settings, root)
    finally:
        stack.down(settings, log=lambda _: None)
        for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_LOCAL_STORAGE_PATH"):
            os.environ.pop(key, None)

"""The ablation flow end to end, as users run it: ``prefect deployment run franca/ablation`` on a real stack (Prefect
server + process worker + MLflow server on free ports), the real stages on a tiny generated corpus, two training
steps per variant.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("e2e_stack", Path(__file__).with_name("e2e_stack.py"))
e2e = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(e2e)  # type: ignore[union-attr]

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1800)]
VARIANTS = ["franca", "single_head", "no_roll", "centering", "no_rasa"]
SMALL = [o for o in e2e.TINY if not o.startswith("train.optim.total_steps")] + [
    "train.optim.total_steps=2", "train.cpus_per_worker=1", "eval.tasks=[knn,position]"]


def test_ablation__variants_run_concurrently_share_the_data_and_compare_in_one_mlflow_run(tmp_path: Path) -> None:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with e2e.running_stack(tmp_path) as live:
        live.cli("prefect", "--no-prompt", "deploy", "--name", "ablation")
        flow_run_id = live.run_pipeline(SMALL, 1500, "franca/ablation")
        assert live.flow_run(flow_run_id).state.is_completed(), live.logs(flow_run_id)

        # Prefect: the data stages ran once, in the ablation's own run; one subflow per variant, at once
        states = live.task_states(flow_run_id)
        data = ["source", "select", "download", "dedup"]
        assert {s: len(states.get(s, [])) for s in data} == dict.fromkeys(data, 1), states
        assert not {"pretrain", "rasa", "evaluate"} & set(states), states  # those run in the variants' subflows
        with e2e.stack.prefect_client(live.settings.prefect_api_url) as client:
            subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        assert sorted(r.name for r in subflows) == sorted(VARIANTS)
        assert all(r.state.is_completed() for r in subflows)
        spans = sorted((r.start_time, r.end_time) for r in subflows)
        assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), f"no two variants overlapped: {spans}"

        # MLflow: the ablation run holds the table and the plot; each variant's run nests under it
        c = live.mlflow()
        exp = c.get_experiment_by_name("franca").experiment_id
        (parent,) = c.search_runs([exp], f"tags.`franca.flow_run_id` = '{flow_run_id}'")
        assert parent.data.tags["franca.kind"] == "ablation" and parent.info.status == "FINISHED"
        arts = {a.path for a in c.list_artifacts(parent.info.run_id, "ablation")}
        assert {"ablation/ablation.json", "ablation/ablation.md", "ablation/ablation_knn.png"} <= arts
        table = json.loads(Path(c.download_artifacts(parent.info.run_id, "ablation/ablation.json",
                                                     str(tmp_path))).read_text())["variants"]
        assert list(table) == [*VARIANTS, "random_init"]  # the baseline, evaluated once (with franca)
        children = c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        variant_runs = {r.info.run_name.rsplit("ablation-", 1)[1]: r for r in children
                        if r.data.tags.get("franca.kind") == "ablation-variant"}
        assert set(variant_runs) == set(VARIANTS)
        for name, run in variant_runs.items():
            stages = {r.data.tags["franca.stage"]: r for r in
                      c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")}
            assert set(stages) == {"pretrain", "rasa", "evaluate"}, name
        # no_rasa is franca's model (one pretraining, served from the store), read without RASA
        pretrains = {v: variant_runs[v] for v in ("franca", "no_rasa")}
        digests = {v: c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{r.info.run_id}' and "
                                    "tags.`franca.stage` = 'pretrain'")[0].data.tags["franca.output_digest"]
                   for v, r in pretrains.items()}
        assert digests["franca"] == digests["no_rasa"]
        group = next(m for m in table["franca"] if m.startswith("knn_top1.")).split(".", 1)[1]
        assert table["no_rasa"][f"knn_top1.{group}"] == table["franca"][f"knn_top1.{group}"]
        assert table["no_rasa"][f"position_mse.{group}"] != table["franca"][f"position_mse.{group}"]
        assert table["franca"][f"knn_top1.{group}"]["se"] > 0
        # the variants trained different models: their pretraining outputs differ
        trained = {c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{variant_runs[v].info.run_id}' and "
                                 "tags.`franca.stage` = 'pretrain'")[0].data.tags["franca.output_digest"]
                   for v in ("franca", "single_head", "no_roll", "centering")}
        assert len(trained) == 4

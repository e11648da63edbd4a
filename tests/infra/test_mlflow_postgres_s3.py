"""MLflow as a team or a cluster runs it (infra/README.md): a PostgreSQL backend store and artifacts proxied to an
S3-compatible store, with one full tiny ``franca run`` logging to it and ``franca lineage --verify`` passing.

PostgreSQL comes from Debian's packages (``make postgres``, which ``make test`` runs: ``apt-get install -y
postgresql`` where it is missing); this test starts a throwaway cluster of its own on 127.0.0.1 (``initdb`` +
``pg_ctl`` as the ``postgres`` user when run as root), ``moto_server`` as the S3 store and ``mlflow server
--backend-store-uri postgresql+psycopg2://... --artifacts-destination s3://...`` as ``infra/mlflow/compose.yaml``
does. The flow runs as a Kubernetes flow pod would (infra/prefect/base-job-template.json): the tracking URI and the S3
settings in its environment, stage outputs on ``storage.root=s3://...``. The database password reaches the server
through ``PGPASSWORD`` and the S3 keys through ``AWS_*``, never a URI; neither may show up in an MLflow param or tag.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from infra.offline import offline_env
from infra.stack import free_port
from tests.mlflow_server import mlflow_server as serve_mlflow

_spec = importlib.util.spec_from_file_location("e2e_stack", Path(__file__).parents[1] / "flows" / "e2e_stack.py")
e2e = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(e2e)  # type: ignore[union-attr]

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(900)]

BIN = Path(sys.executable).parent
BUCKET = "franca-mlflow"
PG_PASSWORD = "pg-test-password-never-logged"
S3_KEY_ID, S3_SECRET = "franca-test-key-id", "franca/test+S3SECRET/never-in-mlflow000"  # moto accepts any
# The provenance tests' run: 2 pretraining steps, k-NN only, evaluated on generated images (no eval.datasets).
FAST = [o for o in e2e.TINY if not o.startswith("train.optim.total_steps")] + [
    "train.optim.total_steps=2", "dedup.include_eval_datasets=false", "eval.tasks=[knn]"]


def _wait_port(port: int, proc: subprocess.Popen[Any], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            assert proc.poll() is None, f"{what} exited with {proc.returncode}"
            assert time.monotonic() < deadline, f"{what} did not listen on 127.0.0.1:{port} in {timeout} s"
            time.sleep(0.2)


@contextmanager
def postgres_cluster() -> Iterator[int]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (password auth, database ``mlflow``); yields its port."""
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        pytest.skip("PostgreSQL's server is not installed: `make postgres` (apt-get install -y postgresql) first")
    pg_bin = Path(initdb[-1]).parent
    # initdb and postgres refuse to run as root: as root, the cluster belongs to the `postgres` user of the package.
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    home = Path(tempfile.mkdtemp(prefix="franca-pg-"))  # not under pytest's tmp: that one is root's alone (0700)
    if as_user:
        user = pwd.getpwnam("postgres")
        os.chown(home, user.pw_uid, user.pw_gid)
    port, data = free_port(), home / "data"
    try:
        pwfile = home / "pw"
        pwfile.write_text(PG_PASSWORD)
        if as_user:
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        subprocess.run([*as_user, str(pg_bin / "initdb"), "-D", str(data), "-U", "franca", f"--pwfile={pwfile}",
                        "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync"],
                       check=True, capture_output=True, timeout=120)
        pwfile.unlink()
        # Only 127.0.0.1 and a socket in the temp dir; durability is not what this cluster is for.
        opts = (f"-c listen_addresses=127.0.0.1 -p {port} -k {home} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off")
        subprocess.run([*as_user, str(pg_bin / "pg_ctl"), "-D", str(data), "-l", str(home / "log"), "-o", opts,
                        "-w", "-t", "120", "start"], check=True, capture_output=True, timeout=180)
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="franca", password=PG_PASSWORD, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        yield port
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_user, str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def moto_server(root: Path) -> Iterator[str]:
    """``moto_server`` on 127.0.0.1 with an empty bucket; yields its endpoint URL."""
    port = free_port()
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=(root / "moto.log").open("w"))
    try:
        _wait_port(port, proc, "moto_server", timeout=60)
        endpoint = f"http://127.0.0.1:{port}"
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT"), timeout=30).close()
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def mlflow_server(root: Path, pg_port: int, s3_endpoint: str) -> Iterator[str]:
    """``mlflow server`` on the PostgreSQL store with artifacts proxied to ``s3://BUCKET/artifacts``."""
    env = {"PGPASSWORD": PG_PASSWORD, "AWS_ACCESS_KEY_ID": S3_KEY_ID, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": s3_endpoint}
    with serve_mlflow(root, backend_uri=f"postgresql+psycopg2://franca@127.0.0.1:{pg_port}/mlflow",
                      artifacts=f"s3://{BUCKET}/artifacts", env=env) as uri:
        yield uri


def test_franca_run__tracks_to_mlflow_on_postgresql_and_s3__lineage_verifies(tmp_path: Path) -> None:
    with postgres_cluster() as pg_port, moto_server(tmp_path) as s3, mlflow_server(tmp_path, pg_port, s3) as uri:
        # The flow as a pod runs it: endpoints and S3 keys in its environment (ConfigMap + Secret), no Prefect server
        # (a temporary one), nothing of the caller's stack.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_", "AWS_"))}
        env.update(offline_env(), MLFLOW_TRACKING_URI=uri, AWS_ACCESS_KEY_ID=S3_KEY_ID, AWS_SECRET_ACCESS_KEY=S3_SECRET,
                   AWS_ENDPOINT_URL=s3, AWS_DEFAULT_REGION="us-east-1", FRANCA_STATE_DIR=str(tmp_path / "state"),
                   PREFECT_HOME=str(tmp_path / "prefect"))
        store = f"s3://{BUCKET}/pipeline"  # stage outputs and checkpoints on S3 too, as on a cluster
        run = subprocess.run([sys.executable, "-m", "franca_cli.main", "run", "--profile", "tiny", *FAST,
                              f"storage.root={store}"], cwd=e2e.REPO, env=env, capture_output=True, text=True,
                             timeout=900)
        assert run.returncode == 0, f"franca run exited {run.returncode}:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
        summary = json.loads(run.stdout[run.stdout.rindex("\n{\n") + 1:])
        assert set(summary["stages"]) == e2e.STAGES and summary["model"]

        lineage = subprocess.run([str(BIN / "franca"), "lineage", summary["model"], "--json", "--verify"],
                                 cwd=e2e.REPO, env=env, capture_output=True, text=True, timeout=300)
        assert lineage.returncode == 0, f"{lineage.stdout[-3000:]}\n{lineage.stderr[-3000:]}"
        record = json.loads(lineage.stdout)
        assert {s["stage"] for s in record["stages"]} == e2e.STAGES
        assert record["verify"] and {c["status"] for c in record["verify"]} <= {"ok", "size-only"}, record["verify"]
        on_s3 = {c["stage"] for c in record["verify"] if c["uri"].startswith(f"{store}/")}
        assert {"source", "download", "pretrain", "highres"} <= on_s3, record["verify"]  # recomputed from S3

        # The runs are in PostgreSQL, their artifacts (outputs.json, the config) in the S3 bucket.
        import mlflow
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=pg_port, user="franca", password=PG_PASSWORD, dbname="mlflow")
        with conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM runs")
            assert cur.fetchone()[0] >= len(e2e.STAGES) + 1
        conn.close()
        s3_env = {"AWS_ACCESS_KEY_ID": S3_KEY_ID, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_ENDPOINT_URL": s3}
        keys = _s3_keys(s3_env)
        assert any(k.endswith("/outputs.json") for k in keys), keys[:20]

        c = mlflow.MlflowClient(uri)
        exp = c.get_experiment_by_name("franca").experiment_id
        runs = c.search_runs([exp])
        assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in runs)  # proxied, no keys on clients
        recorded = json.dumps([[r.data.params, r.data.tags] for r in runs])
        for secret in (PG_PASSWORD, S3_SECRET, S3_KEY_ID):
            assert secret not in recorded
        (download,) = [r for r in runs if r.data.tags.get("franca.stage") == "download"]
        assert download.data.params["data.download.shard_size"] == "50"  # the params are there, the secrets not
        parent = c.get_run(record["pipeline"]["run_id"])
        config = Path(mlflow.artifacts.download_artifacts(f"{parent.info.artifact_uri}/config.json",
                                                          dst_path=str(tmp_path), tracking_uri=uri))  # from S3
        assert json.loads(config.read_text())["storage"]["root"] == store and S3_SECRET not in config.read_text()


def _s3_keys(s3_env: dict[str, str]) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="artifacts/")
    return [o["Key"] for page in pages for o in page.get("Contents", [])]

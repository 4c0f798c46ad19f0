"""The production profile on this machine: the stack with Prefect and MLflow on the real PostgreSQL (127.0.0.1:5432),
closed as the SQLite stack is, holding eight flow runs at once on two process workers with their Dask task runs."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import psycopg
import pytest
from botocore.exceptions import ClientError
from test_stack import _assert_closed_to_strangers, _free_port

from vidops.benchmarks import stack as bench
from vidops.cli import _credentials_refused
from vidops.components.errors import VidopsError
from vidops.components.layout import Layout
from vidops.stack.postgres import SERVICES, Database

POSTGRES = "postgresql://postgres@127.0.0.1:5432"


@pytest.fixture
def prefix() -> Iterator[str]:
    """A prefix of databases no one else uses; they are dropped afterwards, servers' connections and all."""
    name = f"vidops_test_{secrets.token_hex(4)}"
    yield name
    Database.parse(f"{POSTGRES}/{name}").drop()


def _tables(database: str) -> int:
    with psycopg.connect(f"{POSTGRES}/{database}") as db:
        return db.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'").fetchone()[0]


@pytest.mark.slow
def test_the_stack_on_postgresql_is_closed_and_holds_eight_flow_runs_at_once(tmp_path: Path, prefix: str):
    root = tmp_path / "project"
    root.mkdir()
    layout = Layout(root)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "AWS_"))}
    vidops = lambda *args, **env: subprocess.run(
        [sys.executable, "-m", "vidops", *args, "--root", str(root)],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=600,
    )
    ports = [f"--{name}-port={_free_port()}" for name in ("prefect", "mlflow", "s3")]
    # a password in the URL (this PostgreSQL trusts 127.0.0.1, so any is taken) is written nowhere and on no command
    # line
    password = f"pw-{secrets.token_hex(8)}"
    url = f"{POSTGRES.replace('postgres@', f'postgres:{password}@')}/{prefix}"
    started = vidops("stack", "up", *ports, f"--database={url}", "--workers=2")
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        assert password not in started.stdout + started.stderr
        written = [path for path in root.rglob("*") if path.is_file() and password.encode() in path.read_bytes()]
        assert not written, written
        stack_pids = [
            p
            for s in json.loads((layout.state / "stack" / "stack.json").read_text())["services"]
            for p in (s, *s.get("parts", []))
        ]
        assert all(password.encode() not in Path(f"/proc/{p['pid']}/cmdline").read_bytes() for p in stack_pids)
        assert f"keep their state in PostgreSQL, {POSTGRES}/{prefix}_*" in started.stdout
        status = vidops("stack", "status").stdout
        assert "worker-2" in status and "DOWN" not in status and f"state in {POSTGRES}/{prefix}_*" in status
        # every store is in PostgreSQL: Prefect's, MLflow's runs and registry, MLflow's users; none beside the project
        assert all(_tables(f"{prefix}_{service}") > 5 for service in SERVICES)
        stack_dir = layout.state / "stack"
        assert not list(stack_dir.rglob("*.db")), list(stack_dir.rglob("*.db"))
        env = dict(line.split("=", 1) for line in (stack_dir / "env").read_text().splitlines())
        _assert_closed_to_strangers(layout.state, env)

        # a client with a wrong credential is told which service refused it and what to set
        wrong = vidops("lineage", "models:/vidops-classifier@champion", MLFLOW_TRACKING_PASSWORD="wrong")
        assert (
            "the MLflow server at" in wrong.stderr
            and "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in wrong.stderr
        )
        (root / "prefect.yaml").write_text((Path(__file__).parents[1] / "prefect.yaml").read_text())
        wrong = vidops("deploy", PREFECT_API_AUTH_STRING="vidops:wrong")
        assert (
            "the Prefect API at" in wrong.stderr
            and "refused this client (401): set PREFECT_API_AUTH_STRING" in wrong.stderr
        ), wrong.stderr[-2000:]
        s3 = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key="wrong",
            region_name="us-east-1",
        )
        with pytest.raises(ClientError) as refused:
            s3.list_objects_v2(Bucket="vidops")
        assert "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in _credentials_refused(refused.value)

        # the load: eight flow runs submitted together, two workers, each run's batches as task runs on Dask
        load = bench.load(layout, bench.projects(tmp_path / "load", 8))
        assert load.completed == 8, load.line()
        recorded = {sum(states.values()) for states in load.task_runs.values()}
        assert len(recorded) == 1 and recorded.pop() >= 4, (
            load.task_runs
        )  # the same runs: the same task runs, all recorded
        assert all(set(states) == {"COMPLETED"} for states in load.task_runs.values()), load.task_runs
        assert load.errors == []
    finally:
        stopped = vidops("stack", "down")
    assert "stopped: worker-2, worker, prefect, mlflow, s3" in stopped.stdout, stopped.stderr


@pytest.mark.slow
def test_two_workers_train_one_model_together_as_a_kubernetes_indexed_job_would(project: Layout):
    """Two `vidops stage train` processes, each with its TF_CONFIG: one model, the same weights on both, one MLflow
    run."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "AWS_", "TF_CONFIG"))}
    stage = lambda name, *more, **env: subprocess.Popen(
        [sys.executable, "-m", "vidops", "stage", name, "--task", "classification", "--root", str(project.root), *more],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**clean, **env},
    )
    for name in ("validate", "extract"):
        assert stage(name).wait(timeout=600) == 0
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    config = lambda index: json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
    # the workers' seeds differ: alone, they would start from other weights and shuffle otherwise; together, the chief's
    # initial weights reach every worker and each step's gradients are averaged, so they end the same
    trainers = [
        stage("train", "--set", f"train.classification.seed={index}", TF_CONFIG=config(index)) for index in (1, 0)
    ]
    said = [trainer.communicate(timeout=600) for trainer in trainers]
    assert [t.returncode for t in trainers] == [0, 0], [err[-2000:] for _, err in said]
    chief, other = (
        project.models("classification"),
        project.models("classification").with_name("classification.worker-1"),
    )
    assert said[1][0].startswith("train classification: 2 epochs") and "models/classification/model.keras" in said[1][0]
    assert "models/classification.worker-1/model.keras" in said[0][0]
    assert (chief / "run.json").is_file() and not (
        other / "run.json"
    ).exists()  # the chief's training is the one MLflow knows
    check = (
        "import sys, numpy as np; from vidops.components.layers import load_model;"
        "a, b = (load_model(p).get_weights() for p in sys.argv[1:]);"
        "print(len(a), all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)))"
    )
    compared = subprocess.run(
        [sys.executable, "-c", check, str(chief / "model.keras"), str(other / "model.keras")],
        capture_output=True,
        text=True,
        env=clean,
    )
    assert compared.stdout.split() and compared.stdout.split()[-1] == "True", (
        compared.stdout + compared.stderr[-2000:]
    )  # batch norm's too


def test_a_database_url_is_read_and_shown_without_its_password(monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    found = Database.parse("postgresql://ops:s3cr%40t@db.example:6543/team_a")
    assert (found.host, found.port, found.user, found.prefix, found.password) == (
        "db.example",
        6543,
        "ops",
        "team_a",
        "s3cr@t",
    )
    assert found.uri("mlflow") == "postgresql://ops@db.example:6543/team_a_mlflow"
    assert found.prefect_env()["PREFECT_SERVER_DATABASE_PASSWORD"] == "s3cr@t" and found.password_env() == {
        "PGPASSWORD": "s3cr@t"
    }
    assert Database.parse("postgresql://127.0.0.1").prefix == "vidops"
    monkeypatch.setenv("PGPASSWORD", "from-env")
    assert Database.parse("postgresql://ops@db.example/x").password == "from-env"
    for url, said in (
        ("mysql://ops:hunter2@db/x", "expected postgresql://"),
        ("postgresql://ops:hunter2@db/Bad-Name", "the prefix 'Bad-Name'"),
        ("postgresql://ops:hunter2@db:port/x", "the port is not a number"),
        ("postgresql://ops:hunter2@db/x?sslmode=off", r"no \?options"),
    ):
        with pytest.raises(VidopsError, match=said) as refused:
            Database.parse(url)
        assert "hunter2" not in str(refused.value) and "***" in str(refused.value)


def test_a_postgresql_that_does_not_answer_is_named_without_the_password():
    with pytest.raises(VidopsError) as refused:
        Database.parse(f"postgresql://ops:hunter2@127.0.0.1:{_free_port()}/x").ensure()
    said = str(refused.value)
    assert said.startswith("PostgreSQL at postgresql://ops@127.0.0.1:") and "hunter2" not in said


def test_the_databases_are_made_once(prefix: str):
    database = Database.parse(f"{POSTGRES}/{prefix}")
    assert database.ensure() == [f"{prefix}_{service}" for service in SERVICES]
    assert database.ensure() == []

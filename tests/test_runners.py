"""Probing's and extraction's fan-out through Prefect task runners: a local Dask cluster of 2 workers reporting to a
Prefect server on PostgreSQL (the cluster profile's backend: several processes writing at once lock sqlite), and a
scheduler that does not answer."""

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from vidops.components import stages
from vidops.components.errors import VidopsError
from vidops.components.params import RunnerParams
from vidops.flows.runners import mapper, task_runner


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="postgres")
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def prefect_on_postgres(tmp_path_factory):
    """A `prefect server` on a free port with a fresh PostgreSQL database; its API URL."""
    database = f"vidops_test_{uuid.uuid4().hex[:12]}"
    _postgres(f"CREATE DATABASE {database}")
    port, home = _free_port(), tmp_path_factory.mktemp("prefect-server")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    prefect = Path(sys.executable).parent / "prefect"
    log = (home / "server.log").open("wb")
    server = subprocess.Popen(
        [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (home / "server.log").read_text()[-2000:]
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)
        _postgres(f"DROP DATABASE {database} WITH (FORCE)")


@pytest.mark.slow
def test_a_local_dask_cluster_of_two_workers_probes_and_extracts_every_batch(prefect_on_postgres, project, tiny_params):
    params = tiny_params.model_copy(update={"runner": RunnerParams(kind="dask")})
    extract = params.extract.classification.model_copy(update={"workers": 2, "batch_size": 5})
    params = params.model_copy(update={"extract": params.extract.model_copy(update={"classification": extract})})

    @flow
    def extraction() -> tuple:
        from prefect import runtime

        stages.validate(project, params, "classification", mapper(params.runner))
        return stages.extract(project, params, "classification", None, mapper(params.runner)), runtime.flow_run.id

    with temporary_settings({PREFECT_API_URL: prefect_on_postgres}):
        features, run_id = extraction()
        extracted, probed = _batch_runs(run_id, "extract-batch", 5), _batch_runs(run_id, "probe-batch", 2)
    assert (features.extracted, features.failed) == (21, 0) and sum(features.clips.values()) == 21
    assert len(extracted) == 5 and all(t.state.is_completed() for t in extracted), extracted  # 21 clips, 5 a batch
    assert len(probed) == 2 and all(t.state.is_completed() for t in probed), probed  # 16 a batch


def test_no_batches_start_no_task_runner(monkeypatch):
    """A re-run with nothing new to probe or extract hands the mapper no calls: no Dask cluster is started for them."""
    from vidops.flows import runners

    def refused(*args):
        raise AssertionError("a task runner was started for no work")

    monkeypatch.setattr(runners, "task_runner", refused)
    assert list(mapper(RunnerParams(kind="dask"))(print, [], 2)) == []
    with pytest.raises(AssertionError, match="started for no work"):
        list(mapper(RunnerParams(kind="dask"))(print, [("x",)], 2))


def _batch_runs(run_id, name: str, expected: int) -> list:
    """The flow run's task runs called `name` (they reach the API as events, a moment after they ran)."""
    deadline = time.monotonic() + 60
    while True:
        with get_client(sync_client=True) as client:
            runs = [t for t in client.read_task_runs() if t.name == name and str(t.flow_run_id) == str(run_id)]
        if (len(runs) >= expected and all(t.state.is_final() for t in runs)) or time.monotonic() > deadline:
            return runs
        time.sleep(1)


def test_a_dask_scheduler_that_does_not_answer_is_named():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(
        VidopsError, match=f"runner.address: the Dask scheduler at tcp://127.0.0.1:{port} does not answer"
    ):
        task_runner(RunnerParams(kind="dask", address=f"tcp://127.0.0.1:{port}"), 2)

"""The stack profile for real: `vidops stack up` (SeaweedFS, MLflow and Prefect servers, a process worker) on free
ports, `vidops deploy`, a run of the training deployment through the worker, and `vidops stack down`."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(url: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data, {"Content-Type": "application/json"}), timeout=30) as response:
        return json.loads(response.read())


def test_stack_up_deploy_a_scheduled_training_run_through_the_worker_and_down(project):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "AWS_"))}
    vidops = lambda *args: subprocess.run([sys.executable, "-m", "flows.cli", *args, "--root", str(project.root)],  # noqa: E731
                                          capture_output=True, text=True, env=clean, timeout=600)  # fmt: skip
    assert "no Prefect server to deploy to: `vidops stack up` first" in vidops("deploy").stderr

    ports = {name: _free_port() for name in ("prefect", "mlflow", "s3")}
    flags = [f"--{name}-port={port}" for name, port in ports.items()]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = vidops("stack", "up", *flags, f"--mlflow-port={port}")
    assert busy.returncode == 1 and f"port {port} on 127.0.0.1 (mlflow) is taken" in busy.stderr
    assert not (project.state / "stack" / "stack.json").exists()

    started = vidops("stack", "up", *flags)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        status = vidops("stack", "status").stdout
        assert all(f"{name}" in status for name in ("s3", "mlflow", "prefect", "worker")) and "DOWN" not in status
        env = dict(line.split("=", 1) for line in (project.state / "stack" / "env").read_text().splitlines())
        api = env["PREFECT_API_URL"]
        assert api == f"http://127.0.0.1:{ports['prefect']}/api"
        assert _api(f"http://127.0.0.1:{ports['prefect']}/ui-settings")["api_url"] == api  # the UI talks to its own server

        (project.root / "prefect.yaml").write_text((Path(__file__).parent.parent / "prefect.yaml").read_text().replace("0 2 * * *", "every night"))
        assert "deployment nightly: schedule 'every night' is not a cron string" in vidops("deploy").stderr
        (project.root / "prefect.yaml").unlink()
        deployed = vidops("deploy")
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        assert "training_pipeline/nightly" in deployed.stdout and "0 2 * * * UTC" in deployed.stdout

        assert "ingest/every-15-minutes" in deployed.stdout and "*/15 * * * * UTC" in deployed.stdout
        cluster = subprocess.run([sys.executable, "-m", "flows.cli", "deploy", "--spec", str(Path(__file__).parents[1] / "infra" / "kubernetes" / "prefect.yaml"),
                                  "--root", str(project.root)], capture_output=True, text=True, timeout=600,
                                 env={**clean, "VIDOPS_REPO": "https://git.example.com/team/videos.git", "VIDOPS_IMAGE": "vidops:test"})  # fmt: skip
        assert cluster.returncode == 0, cluster.stderr[-3000:]
        gpu = _api(f"{api}/deployments/name/training_pipeline/nightly-gpu")
        assert gpu["work_pool_name"] == "vidops-kubernetes-gpu" and gpu["job_variables"] == {"image": "vidops:test", "gpus": 1}
        assert gpu["pull_steps"][0]["prefect.deployments.steps.git_clone"]["repository"] == "https://git.example.com/team/videos.git"
        nightly = _api(f"{api}/deployments/name/training_pipeline/nightly")
        assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"] and nightly["work_pool_name"] == "vidops-process"
        listed = {d["name"] for d in _api(f"{api}/deployments/filter", {})}  # what the UI's Deployments page shows
        assert {"nightly", "on-demand", "every-15-minutes", "nightly-gpu"} <= listed

        # the README's lines, as a user types them in the project folder: load the env, then ask prefect for a run
        run = _readme_run(project.root, ["train.classification.epochs=3"])
        assert run["parameters"]["overrides"] == ["train.classification.epochs=3"] and run["deployment_id"] == nightly["id"]
        deadline = time.monotonic() + 900
        while (state := _api(f"{api}/flow_runs/{run['id']}")["state"])["type"] not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            assert time.monotonic() < deadline, state
            time.sleep(3)
        assert state["type"] == "COMPLETED", (project.state / "stack" / "logs" / "worker.log").read_text()[-3000:]

        mlflow = MlflowClient(env["MLFLOW_TRACKING_URI"])
        for name in ("vidops-classifier", "vidops-sync"):
            champion = mlflow.get_model_version_by_alias(name, "champion")
            assert mlflow.get_run(champion.run_id).data.tags["vidops.prefect_flow_run_id"] == run["id"]
        classifier = mlflow.get_model_version_by_alias("vidops-classifier", "champion")
        assert mlflow.get_run(classifier.run_id).data.params["train.classification.epochs"] == "3"  # the run's override
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")  # fmt: skip
        assert s3.list_objects_v2(Bucket="vidops", Prefix="mlflow/")["KeyCount"] > 0  # the artifacts went to S3
        assert s3.list_objects_v2(Bucket="vidops", Prefix="prefect-results/")["KeyCount"] >= 10  # and the cached stage results
        assert (project.reports("classification") / "promotion" / "promotion.json").is_file()  # the run worked in the project
    finally:
        stopped = vidops("stack", "down")
    assert stopped.returncode == 0 and "stopped: worker, prefect, mlflow, s3" in stopped.stdout, stopped.stderr
    assert "the stack is down" in vidops("stack", "status").stdout
    for port in ports.values():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))  # nothing listens any more
    assert (project.state / "stack" / "mlflow.db").is_file()  # the data stays for the next `up`


def _readme_run(root: Path, overrides: list[str]) -> dict:
    """Run the README's env line and its `prefect deployment run ... --params` line through a shell in `root`, with
    these overrides; the flow run it created, as the Prefect API has it."""
    lines = (Path(__file__).parents[1] / "README.md").read_text().splitlines()
    load = next(line for line in lines if line.startswith("set -a; . .vidops/stack/env; set +a"))
    command = next(line for line in lines if line.startswith(".venv/bin/prefect deployment run training_pipeline/nightly --params"))
    params = json.loads(command.split("--params", 1)[1].strip().strip("'"))
    assert set(params) == {"overrides", "refresh"}  # what the README shows
    command = command.replace(".venv/bin/", f"{Path(sys.executable).parent}/").replace(json.dumps(params["overrides"]), json.dumps(overrides))
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "AWS_"))}
    done = subprocess.run(["bash", "-c", f"{load}\n{command}"], cwd=root, env=clean, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    flow_run_id = done.stdout.split("UUID:", 1)[1].split()[0]
    env = dict(line.split("=", 1) for line in (root / ".vidops" / "stack" / "env").read_text().splitlines())
    return _api(f"{env['PREFECT_API_URL']}/flow_runs/{flow_run_id}")


def test_vidops_serve_serves_the_deployments_in_one_process(project):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "AWS_"))}
    served = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--root", str(project.root)], env=clean,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    seen = []
    try:
        deadline = time.monotonic() + 180
        while not any("promotion/on-demand" in line for line in seen):
            assert served.poll() is None and time.monotonic() < deadline, "".join(seen)[-3000:]
            seen.append(served.stdout.readline())
        assert any("training_pipeline/nightly" in line for line in seen)
    finally:  # the whole group: `serve` and the temporary Prefect server it started
        os.killpg(served.pid, signal.SIGTERM)
        served.communicate(timeout=60)



def test_vidops_serve_serves_the_deployments_in_one_process(project):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "AWS_"))}
    served = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--root", str(project.root)], env=clean,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    seen = []
    try:
        deadline = time.monotonic() + 180
        while not any("promotion/on-demand" in line for line in seen):
            assert served.poll() is None and time.monotonic() < deadline, "".join(seen)[-3000:]
            seen.append(served.stdout.readline())
        assert any("training_pipeline/nightly" in line for line in seen)
    finally:  # the whole group: `serve` and the temporary Prefect server it started
        os.killpg(served.pid, signal.SIGTERM)
        served.communicate(timeout=60)

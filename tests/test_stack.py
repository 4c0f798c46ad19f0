"""The stack profile for real: `vidops stack up` (SeaweedFS, MLflow and Prefect servers, a process worker) on free
ports, `vidops deploy`, a run of the training deployment through the worker, and `vidops stack down`."""

import base64
import functools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
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


def _api(url: str, body: dict | None = None, auth: str | None = None) -> dict:
    """A Prefect API call, with the stack's auth string when given."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | (
        {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    )
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=30) as response:
        return json.loads(response.read())


def _status(
    method: str, url: str, body: dict | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str]]:
    """The status and headers of a request sent without credentials unless `headers` has them."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json", **(headers or {})}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def test_stack_up_deploy_a_scheduled_training_run_through_the_worker_and_down(project, monkeypatch):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "AWS_"))}
    vidops = lambda *args: subprocess.run(
        [sys.executable, "-m", "vidops", *args, "--root", str(project.root)],
        capture_output=True,
        text=True,
        env=clean,
        timeout=600,
    )
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
        assert (
            _api(f"http://127.0.0.1:{ports['prefect']}/ui-settings")["api_url"] == api
        )  # the UI talks to its own server
        _assert_closed_to_strangers(project.state, env)
        prefect = functools.partial(_api, auth=env["PREFECT_API_AUTH_STRING"])  # as the stack's clients call it

        (project.root / "prefect.yaml").write_text(
            (Path(__file__).parent.parent / "prefect.yaml").read_text().replace("0 2 * * *", "every night")
        )
        assert "deployment nightly: schedule 'every night' is not a cron string" in vidops("deploy").stderr
        (project.root / "prefect.yaml").unlink()
        deployed = vidops("deploy")
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        assert "training_pipeline/nightly" in deployed.stdout and "0 2 * * * UTC" in deployed.stdout

        assert "ingest/every-15-minutes" in deployed.stdout and "*/15 * * * * UTC" in deployed.stdout
        cluster = subprocess.run(
            [
                sys.executable,
                "-m",
                "vidops",
                "deploy",
                "--spec",
                str(Path(__file__).parents[1] / "infra" / "kubernetes" / "prefect.yaml"),
                "--root",
                str(project.root),
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env={**clean, "VIDOPS_REPO": "https://git.example.com/team/videos.git", "VIDOPS_IMAGE": "vidops:test"},
        )
        assert cluster.returncode == 0, cluster.stderr[-3000:]
        gpu = prefect(f"{api}/deployments/name/training_pipeline/nightly-gpu")
        assert gpu["work_pool_name"] == "vidops-kubernetes-gpu" and gpu["job_variables"] == {
            "image": "vidops:test",
            "gpus": 1,
        }
        assert (
            gpu["pull_steps"][0]["prefect.deployments.steps.git_clone"]["repository"]
            == "https://git.example.com/team/videos.git"
        )
        nightly = prefect(f"{api}/deployments/name/training_pipeline/nightly")
        assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"] and nightly[
            "work_pool_name"
        ] == "vidops-process"
        listed = {d["name"] for d in prefect(f"{api}/deployments/filter", {})}  # what the UI's Deployments page shows
        assert {"nightly", "on-demand", "every-15-minutes", "nightly-gpu"} <= listed

        # the README's lines, as a user types them in the project folder: load the env, then ask prefect for a run
        run = _readme_run(project.root, ["train.classification.epochs=3"])
        assert (
            run["parameters"]["overrides"] == ["train.classification.epochs=3"]
            and run["deployment_id"] == nightly["id"]
        )
        deadline = time.monotonic() + 900
        while (state := prefect(f"{api}/flow_runs/{run['id']}")["state"])["type"] not in (
            "COMPLETED",
            "FAILED",
            "CRASHED",
            "CANCELLED",
        ):
            assert time.monotonic() < deadline, state
            time.sleep(3)
        assert state["type"] == "COMPLETED", (project.state / "stack" / "logs" / "worker.log").read_text()[-3000:]

        for name in (
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
        ):  # as the env file makes a client of the stack
            monkeypatch.setenv(name, env[name])
        mlflow = MlflowClient(env["MLFLOW_TRACKING_URI"])
        for name in ("vidops-classifier", "vidops-sync"):
            champion = mlflow.get_model_version_by_alias(name, "champion")
            assert mlflow.get_run(champion.run_id).data.tags["vidops.prefect_flow_run_id"] == run["id"]
        classifier = mlflow.get_model_version_by_alias("vidops-classifier", "champion")
        assert mlflow.get_run(classifier.run_id).data.params["train.classification.epochs"] == "3"  # the run's override
        s3 = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        assert s3.list_objects_v2(Bucket="vidops", Prefix="mlflow/")["KeyCount"] > 0  # the artifacts went to S3
        assert (
            s3.list_objects_v2(Bucket="vidops", Prefix="prefect-results/")["KeyCount"] >= 10
        )  # and the cached stage results
        assert (
            project.reports("classification") / "promotion" / "promotion.json"
        ).is_file()  # the run worked in the project
        _assert_no_secret_outside_private_files(project.root, env, s3)
    finally:
        stopped = vidops("stack", "down")
    assert stopped.returncode == 0 and "stopped: worker, prefect, mlflow, s3" in stopped.stdout, stopped.stderr
    assert "the stack is down" in vidops("stack", "status").stdout
    for port in ports.values():
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))  # nothing listens any more
    assert (project.state / "mlflow.db").is_file()  # the registry stays, for the embedded profile and the next `up`


def _readme_run(root: Path, overrides: list[str]) -> dict:
    """Run the README's env line and its `prefect deployment run ... --params` line through a shell in `root`, with
    these overrides; the flow run it created, as the Prefect API has it."""
    lines = (Path(__file__).parents[1] / "README.md").read_text().splitlines()
    load = next(line for line in lines if line.startswith("set -a; . .vidops/stack/env; set +a"))
    command = next(
        line for line in lines if line.startswith(".venv/bin/prefect deployment run training_pipeline/nightly --params")
    )
    params = json.loads(command.split("--params", 1)[1].strip().strip("'"))
    assert set(params) == {"overrides", "refresh"}  # what the README shows
    command = command.replace(".venv/bin/", f"{Path(sys.executable).parent}/").replace(
        json.dumps(params["overrides"]), json.dumps(overrides)
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "AWS_"))}
    done = subprocess.run(
        ["bash", "-c", f"{load}\n{command}"], cwd=root, env=clean, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    flow_run_id = done.stdout.split("UUID:", 1)[1].split()[0]
    env = dict(line.split("=", 1) for line in (root / ".vidops" / "stack" / "env").read_text().splitlines())
    return _api(f"{env['PREFECT_API_URL']}/flow_runs/{flow_run_id}", auth=env["PREFECT_API_AUTH_STRING"])


def _assert_closed_to_strangers(state: Path, env: dict[str, str]) -> None:
    """Anonymous requests that would change something are refused by each server, and so are other origins and Hosts."""
    api, mlflow = env["PREFECT_API_URL"], env["MLFLOW_TRACKING_URI"]
    evil = {"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    # the three POSTs that made the process worker run a shell command: a flow, a deployment, a flow run
    assert _status("POST", f"{api}/flows/", {"name": "evil"})[0] == 401
    assert (
        _status("POST", f"{api}/deployments/", {"name": "evil", "flow_id": "00000000-0000-0000-0000-000000000000"})[0]
        == 401
    )
    assert _status("POST", f"{api}/flow_runs/", {"flow_id": "00000000-0000-0000-0000-000000000000"})[0] == 401
    assert (
        _status(
            "POST",
            f"{api}/flows/",
            {"name": "evil"},
            {"Authorization": "Basic " + base64.b64encode(b"vidops:guess").decode()},
        )[0]
        == 401
    )
    assert "access-control-allow-origin" not in {
        k.lower() for k in _status("OPTIONS", f"{api}/flows/", headers=evil)[1]
    }
    assert _status("GET", f"{api}/health")[0] == 200  # health probes need no credentials

    for path, body in (
        ("experiments/create", {"name": "evil"}),
        ("registered-models/create", {"name": "evil"}),
        ("model-versions/create", {"name": "vidops-classifier", "source": "s3://evil/model"}),
        ("registered-models/alias", {"name": "vidops-classifier", "alias": "champion", "version": "1"}),
    ):
        assert _status("POST", f"{mlflow}/api/2.0/mlflow/{path}", body)[0] == 401, path
    assert _status("GET", f"{mlflow}/api/2.0/mlflow/registered-models/search")[0] == 401  # nor read
    login = {
        "Authorization": "Basic "
        + base64.b64encode(f"{env['MLFLOW_TRACKING_USERNAME']}:{env['MLFLOW_TRACKING_PASSWORD']}".encode()).decode()
    }
    assert _status("GET", f"{mlflow}/api/2.0/mlflow/experiments/search?max_results=1", headers=login)[0] == 200
    assert (
        _status(
            "GET",
            f"{mlflow}/api/2.0/mlflow/experiments/search?max_results=1",
            headers={**login, "Host": "evil.example"},
        )[0]
        == 403
    )  # DNS rebinding
    assert "access-control-allow-origin" not in {
        k.lower() for k in _status("OPTIONS", f"{mlflow}/api/2.0/mlflow/experiments/create", headers=evil)[1]
    }

    # SeaweedFS: S3 wants its keys; the filer and volume server want a JWT that only SeaweedFS signs; the master refuses
    # every client that is not one of its own parts (an anonymous `/col/delete` would drop the bucket's data)
    from vidops.stack.seaweedfs import _flag

    s3 = json.loads((state / "stack" / "stack.json").read_text())["services"][0]
    master, volume, filer = (f"http://127.0.0.1:{_flag(process['argv'], '-port')}" for process in (*s3["parts"], s3))
    assert _status("GET", f"{master}/col/delete?collection=vidops")[0] == 401
    assert _status("GET", f"{master}/dir/assign")[0] == 401
    assert _status("PUT", f"{filer}/buckets/vidops/evil.txt", {"x": 1})[0] == 401
    assert _status("POST", f"{filer}/buckets/vidops/", {"x": 1})[0] == 401
    assert _status("GET", f"{filer}/buckets/vidops/?pretty=y")[0] == 401  # nor list
    assert _status("POST", f"{volume}/1,01637037d6", {"x": 1})[0] == 401
    assert _status("PUT", f"{env['AWS_ENDPOINT_URL']}/vidops/evil.txt", {"x": 1})[0] == 403
    # their gRPC ports take only TLS with a certificate that SeaweedFS's own CA signed: through them a client could
    # otherwise assign, write and delete any file
    grpc = [int(_flag(process["argv"], "-port.grpc")) for process in s3["parts"]] + [
        int(_flag(s3["argv"], "-port.grpc")),
        int(_flag(s3["argv"], "-s3.port.grpc")),
    ]
    for port in grpc:
        _assert_grpc_wants_a_certificate(port, state / "s3" / "tls")


HTTP2_PREFACE = (
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
)  # and an empty SETTINGS frame


def _http2_answer(sock: socket.socket) -> bytes:
    """The first frame header a server sends back to HTTP/2's preface: a gRPC server's is a SETTINGS frame (type 4)."""
    sock.sendall(HTTP2_PREFACE)
    return sock.recv(9)


def _assert_grpc_wants_a_certificate(port: int, tls: Path) -> None:
    """Plain HTTP/2 gets no gRPC answer, TLS without a client certificate is refused, and the parts' own certificate
    gets an answer (so the refusals are TLS's, not a closed port's)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
        try:
            answer = _http2_answer(plain)
        except ConnectionError:
            answer = b""
        assert answer[3:4] != b"\x04", f"gRPC port {port} answers plaintext"
    context = ssl.create_default_context(cafile=tls / "ca.crt")
    context.check_hostname = False  # the certificates name 127.0.0.1 as an IP address, which is checked below by the CA
    context.set_alpn_protocols(["h2"])
    with (
        pytest.raises(ssl.SSLError, match=r"(?i)certificate"),
        context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10)) as anonymous,
    ):
        _http2_answer(anonymous)
    context.load_cert_chain(tls / "client.crt", tls / "client.key")
    with context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10)) as ours:
        assert _http2_answer(ours)[3:4] == b"\x04", f"gRPC port {port} does not answer SeaweedFS's own client"


def _assert_no_secret_outside_private_files(root: Path, env: dict[str, str], s3) -> None:
    """No credential of the stack is in any file the run wrote that is not the owner's alone (logs, reports, stores,
    Prefect's database with its logs and artifacts), in any object in the project's S3 (MLflow's artifacts, cached
    results), or on any command line."""
    kept = json.loads((root / ".vidops" / "stack" / "secrets.json").read_text())
    found = {
        env["AWS_SECRET_ACCESS_KEY"],
        env["PREFECT_API_AUTH_STRING"].split(":", 1)[1],
        env["MLFLOW_TRACKING_PASSWORD"],
        kept["mlflow_flask_key"],
        *(
            line.split('"')[1]
            for line in (root / ".vidops" / "s3" / "security.toml").read_text().splitlines()
            if line.startswith("key =") and "/" not in line
        ),
        *(key.read_text().splitlines()[1] for key in (root / ".vidops" / "s3" / "tls").glob("*.key")),
    }
    secret_bytes = [value.encode() for value in found]
    leaks = []
    for path in root.rglob("*"):
        if (
            path.is_file() and not path.is_symlink() and path.stat().st_mode & 0o077
        ):  # readable by others than the owner
            data = path.read_bytes()
            leaks += [str(path) for value in secret_bytes if value in data]
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="vidops"):
        for item in page.get("Contents", []):
            data = s3.get_object(Bucket="vidops", Key=item["Key"])[
                "Body"
            ].read()  # as stored, before SeaweedFS compresses it
            leaks += [f"s3://vidops/{item['Key']}" for value in secret_bytes if value in data]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes()
        except OSError:
            continue
        leaks += [f"the command line of pid {cmdline.parent.name}" for value in secret_bytes if value in argv]
    assert not leaks, leaks


def test_vidops_serve_serves_the_deployments_in_one_process(project):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "AWS_"))}
    served = subprocess.Popen(
        [sys.executable, "-m", "vidops", "serve", "--root", str(project.root)],
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = []
    try:
        deadline = time.monotonic() + 180
        while not any("promotion/on-demand" in line for line in seen):
            assert served.poll() is None and time.monotonic() < deadline, "".join(seen)[-3000:]
            seen.append(served.stdout.readline())
        assert any("training_pipeline/nightly" in line for line in seen)
        # the temporary Prefect API that `serve` started answers health probes and nobody without its string
        temporary = f"http://127.0.0.1:{_temporary_api_port(served.pid)}/api"
        assert _status("GET", f"{temporary}/health")[0] == 200
        assert _status("POST", f"{temporary}/flows/", {"name": "evil"})[0] == 401
        assert _status("POST", f"{temporary}/flow_runs/filter", {})[0] == 401
    finally:  # the whole group: `serve` and the temporary Prefect server it started
        os.killpg(served.pid, signal.SIGTERM)
        served.communicate(timeout=60)


def _temporary_api_port(session: int) -> int:
    """The port of the ephemeral Prefect API (uvicorn) that a process started in its session."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode().split("\0")
            in_session = os.getsid(int(cmdline.parent.name)) == session
        except (OSError, UnicodeDecodeError):
            continue
        if in_session and "uvicorn" in argv and "--port" in argv:
            return int(argv[argv.index("--port") + 1])
    raise AssertionError(f"no temporary Prefect API in session {session}")


def test_one_registry_for_the_project_whichever_profile_is_up(project, monkeypatch):
    """A champion registered on the embedded profile is the stack's, loadable through its server; versions registered
    through the stack (into the embedded profile's experiment, and into one the stack made, whose artifacts are in the
    project's S3) are the embedded profile's after `down`, and load with the S3 vidops starts for them."""
    from vidops.components.tracking import Tracking
    from vidops.components.tracking import embedded as embedded_tracking
    from vidops.stack.seaweedfs import _serving, project_store, registry_store

    for name in [k for k in os.environ if k.startswith(("MLFLOW_", "PREFECT_", "AWS_"))]:
        monkeypatch.delenv(name)
    clean = dict(os.environ)
    vidops = lambda *args: subprocess.run(
        [sys.executable, "-m", "vidops", *args, "--root", str(project.root)],
        capture_output=True,
        text=True,
        env=clean,
        timeout=600,
    )
    embedded = embedded_tracking(project)
    first = _register(embedded, "vidops", slope=2.0)
    MlflowClient(embedded.uri).set_registered_model_alias(MODEL, "champion", first)
    assert _artifact_location(embedded, "vidops").startswith((project.state / "mlartifacts").as_uri())

    ports = {name: _free_port() for name in ("prefect", "mlflow", "s3")}
    started = vidops("stack", "up", *[f"--{name}-port={port}" for name, port in ports.items()])
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        assert f"MLflow serves the project's one registry, {project.state / 'mlflow.db'}" in started.stdout
        shown = vidops("lineage", f"models:/{MODEL}@champion")
        assert shown.returncode == 0 and f"model     {MODEL} version {first} (champion)" in shown.stdout, shown.stderr
        env = dict(line.split("=", 1) for line in (project.state / "stack" / "env").read_text().splitlines())
        server = Tracking(env["MLFLOW_TRACKING_URI"])
        with monkeypatch.context() as inside:  # a client of the stack, as its env file makes one
            for name, value in env.items():
                inside.setenv(name, value)
            assert _predict(server, f"models:/{MODEL}@champion") == 2.0  # the embedded champion, through the server
            second = _register(server, "vidops", slope=3.0)  # the embedded profile's experiment: local artifacts
            third = _register(server, "made-on-stack", slope=4.0)
            assert _artifact_location(server, "made-on-stack").startswith("s3://vidops/mlflow/")
            MlflowClient(server.uri).set_registered_model_alias(MODEL, "champion", third)
    finally:
        stopped = vidops("stack", "down")
    assert stopped.returncode == 0, stopped.stderr

    shown = vidops("lineage", f"models:/{MODEL}@champion")  # the embedded profile again
    assert shown.returncode == 0 and f"model     {MODEL} version {third} (champion)" in shown.stdout, shown.stderr
    with registry_store(project):
        assert _serving and os.environ["MLFLOW_S3_ENDPOINT_URL"].startswith(
            "http://127.0.0.1:"
        )  # the project's S3, started for this
        assert _predict(embedded, f"models:/{MODEL}@champion") == 4.0
        assert _predict(embedded, f"models:/{MODEL}/{second}") == 3.0
        endpoint = os.environ["AWS_ENDPOINT_URL"]
        with project_store(
            project
        ):  # as `vidops demo` pushes its datasets inside: the same SeaweedFS, not a second one
            assert os.environ["AWS_ENDPOINT_URL"] == endpoint and len(_serving) == 1
    assert "MLFLOW_S3_ENDPOINT_URL" not in os.environ and not _serving  # and stopped after


MODEL = "vidops-test-model"


def _register(tracking, experiment: str, slope: float) -> str:
    """Log y = slope * x as a scikit-learn model in `experiment` (made as vidops makes its own) and register it; its
    version."""
    import mlflow
    import numpy as np
    from sklearn.linear_model import LinearRegression

    from vidops.components.tracking import experiment_id, fluent_at

    with fluent_at(tracking), mlflow.start_run(experiment_id=experiment_id(experiment, tracking)):
        model = LinearRegression().fit(np.array([[0.0], [1.0]]), np.array([0.0, slope]))
        return str(mlflow.sklearn.log_model(model, name="model", registered_model_name=MODEL).registered_model_version)


def _predict(tracking, model_uri: str) -> float:
    """What the model at `model_uri` says for x = 1."""
    import mlflow
    import numpy as np

    from vidops.components.tracking import fluent_at

    with fluent_at(tracking):
        return round(float(mlflow.pyfunc.load_model(model_uri).predict(np.array([[1.0]]))[0]), 6)


def _artifact_location(tracking, name: str) -> str:
    """The artifact location of the experiment `name`."""
    return MlflowClient(tracking.uri).get_experiment_by_name(name).artifact_location

"""The champion served by a real `mlflow models serve` process takes a video, and `vidops predict` does the same."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from vidops.components.layout import REPORT
from vidops.components.promotion import promote
from vidops.components.registry import register_model
from vidops.components.seal import registry_key
from vidops.components.serving import encode
from vidops.components.tracking import Tracking

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def registered(trained_project, tiny_params, tmp_path_factory) -> Path:
    """The tiny classifier registered and made champion in an embedded store of its own project; the project's root."""
    root = trained_project.root
    state = root / ".vidops"
    tracking = Tracking(f"sqlite:///{state / 'mlflow.db'}", artifact_root=(state / "mlartifacts").as_uri())
    task = "classification"
    register_model(
        trained_project.models(task),
        trained_project.features(task),
        trained_project.raw("demo"),
        trained_project.reports(task) / "metrics.json",
        trained_project.catalog(task) / REPORT,
        tiny_params,
        task,
        tracking,
        {},
        registry_key=registry_key(trained_project),
    )  # sealed, as the register stage does
    promote(tracking, "vidops-classifier", None, "the model under test")
    return root


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_mlflow_models_serve_answers_a_posted_video_and_keeps_serving_after_a_bad_one(registered):
    port = _free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{registered / '.vidops' / 'mlflow.db'}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }  # mlflow runs `uvicorn` from PATH
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            "models:/vidops-classifier@champion",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the server did not answer /ping in 180 s"
                time.sleep(1)
        clip = sorted((registered / "data" / "raw" / "demo" / "zoom_in").glob("*.mp4"))[0]
        status, body = _post(
            f"{base}/invocations", {"dataframe_split": {"columns": ["video"], "data": [[encode(clip)]]}}
        )
        assert status == 200, body
        answer = body["predictions"][0]
        assert answer["label"] in {k.removeprefix("p_") for k in answer if k.startswith("p_")}
        assert 0 < answer["probability"] <= 1

        status, body = _post(
            f"{base}/invocations", {"dataframe_split": {"columns": ["video"], "data": [["bm90IGEgdmlkZW8gYXQgYWxs"]]}}
        )
        assert status == 400 and "not a readable video" in body["message"]
        status, body = _post(f"{base}/invocations", {"dataframe_split": {"columns": ["video"], "data": []}})
        assert 400 <= status < 500
        for path in (str(clip), "/no/such/file.mp4"):  # a posted server path is refused alike, whether it exists or not
            status, body = _post(f"{base}/invocations", {"dataframe_split": {"columns": ["video"], "data": [[path]]}})
            assert status == 400 and "not base64 file bytes" in body["message"], body
        with urllib.request.urlopen(f"{base}/ping", timeout=5) as still:
            assert still.status == 200
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_vidops_predict_answers_for_each_video_and_names_a_missing_model(registered):
    clips = sorted((registered / "data" / "raw" / "demo" / "rotate").glob("*.mp4"))[:2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    run = lambda *args: subprocess.run(
        [sys.executable, "-m", "vidops", "predict", *args, "--root", str(registered)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    result = run("models:/vidops-classifier@champion", *map(str, clips))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and all(
        line.startswith(str(clip)) and "label=" in line for line, clip in zip(lines, clips, strict=True)
    )
    missing = run("models:/vidops-nothing@champion", str(clips[0]))
    assert missing.returncode == 1 and "models:/vidops-nothing@champion: not in the registry" in missing.stderr


PLANTED = """
import pathlib

import mlflow

pathlib.Path(MARKER).touch()  # what a planted model could do as it loads: anything


class Planted(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


mlflow.models.set_model(Planted())
"""


def test_a_planted_or_altered_version_is_refused_before_any_of_its_code_runs(
    registered, tmp_path, monkeypatch, mlflow_at
):
    import mlflow
    from mlflow import MlflowClient

    from vidops.components.seal import ORIGIN

    client = MlflowClient(f"sqlite:///{registered / '.vidops' / 'mlflow.db'}")
    sealed = client.get_model_version_by_alias("vidops-classifier", "champion")
    code, marker = tmp_path / "planted.py", tmp_path / "ran"
    code.write_text(PLANTED.replace("MARKER", repr(str(marker))))
    mlflow_at(client.tracking_uri)
    planted = mlflow.pyfunc.log_model(name="model", python_model=str(code), registered_model_name="vidops-classifier")
    version = str(planted.registered_model_version)
    marker.unlink()  # MLflow runs a model's code once as it logs it
    clip = str(sorted((registered / "data" / "raw" / "demo" / "rotate").glob("*.mp4"))[0])
    predict = [
        sys.executable,
        "-m",
        "vidops",
        "predict",
        "models:/vidops-classifier@champion",
        clip,
        "--root",
        str(registered),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    try:
        client.set_registered_model_alias("vidops-classifier", "champion", version)
        refused = subprocess.run(predict, capture_output=True, text=True, env=env, timeout=600)
        assert (
            refused.returncode == 1
            and (
                f"models:/vidops-classifier/{version}: not a version this project's vidops registered "
                f"(it has no {ORIGIN} tag)"
            )
            in refused.stderr
        )
        client.set_model_version_tag(
            "vidops-classifier", version, ORIGIN, sealed.tags[ORIGIN]
        )  # a seal copied from a real version
        refused = subprocess.run(predict, capture_output=True, text=True, env=env, timeout=600)
        assert refused.returncode == 1 and "its files are not the ones sealed at registration" in refused.stderr
        assert not marker.exists()  # none of its code ran
    finally:
        client.set_registered_model_alias("vidops-classifier", "champion", sealed.version)


def test_the_promotion_flow_and_a_person_s_promotion_run_from_the_cli(registered, tiny_params):
    (registered / "params.yaml").write_text(yaml.safe_dump(tiny_params.to_yaml_dict()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    vidops = lambda *args: subprocess.run(
        [sys.executable, "-m", "vidops", *args, "--root", str(registered)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    gated = vidops("run", "promotion", "--task", "classification")
    assert gated.returncode == 0, gated.stderr[-2000:]
    assert "classification: vidops-classifier version 1: already champion" in gated.stdout
    assert (
        "vidops-classifier version 1 is now champion"
        in vidops("promote", "vidops-classifier", "--version", "1", "--reason", "sure").stdout
    )
    assert "has no previous-champion" in vidops("rollback", "vidops-classifier").stderr
    assert "--version names a version of one model: add --task" in vidops("run", "promotion", "--version", "1").stderr

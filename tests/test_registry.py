import base64
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import warnings
from contextlib import closing
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import faults
from vidops.components.errors import VidopsError
from vidops.components.generate import MOTIONS
from vidops.components.layout import REPORT, Layout
from vidops.components.registry import CHALLENGER, CHAMPION, EVALUATED, register_model
from vidops.components.tracking import Tracking


@pytest.fixture
def tracking(tmp_path: Path) -> Tracking:
    return Tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=(tmp_path / "artifacts").as_uri())


def _register(project, params, tracking, task="classification", metrics=None, tags=None):
    return register_model(
        project.models(task),
        project.features(task),
        project.raw(params.datasets.of(task)),
        metrics or project.reports(task) / "metrics.json",
        project.catalog(task) / REPORT,
        params,
        task,
        tracking,
        tags or {},
    )


def test_a_registered_version_is_the_challenger_with_its_evaluation_params_data_and_curves(
    trained_project, tiny_params, tracking, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = _register(trained_project, tiny_params, tracking, tags={"vidops.dataset": "d"})
    assert "MLFLOW_TRACKING_URI" not in os.environ  # a later stage of the process finds its own store, not this one
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9/the-user-s")
    second = _register(trained_project, tiny_params, tracking)
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:9/the-user-s"
    assert (first.version, second.version) == ("1", "2")

    client = MlflowClient(tracking.uri)
    name = tiny_params.registry.classification.model_name
    assert str(client.get_model_version_by_alias(name, CHALLENGER).version) == "2"
    with pytest.raises(MlflowException):  # crowning is the gate's decision (test_promotion.py)
        client.get_model_version_by_alias(name, CHAMPION)
    metrics = json.loads((trained_project.reports("classification") / "metrics.json").read_text())
    assert client.get_model_version(name, "1").tags[EVALUATED] == f"accuracy={metrics['accuracy']}"
    run = client.get_run(first.run_id)
    assert run.data.metrics["accuracy"] == metrics["accuracy"]
    assert run.data.params["train.classification.epochs"] == str(tiny_params.train.classification.epochs)
    assert not any(key.startswith(("train.sync", "extract.sync")) for key in run.data.params)  # only this task's params
    assert run.data.tags["vidops.dataset"] == "d" and run.data.tags["vidops.task"] == "classification"
    assert run.data.metrics["clips_accepted"] == 21 and run.data.metrics["clips_quarantined"] == 0
    artifacts = {a.path for a in client.list_artifacts(first.run_id)}
    assert {"training_curves.png", "evaluation", "validation", "labels.json"} <= artifacts
    epochs = client.get_metric_history(first.run_id, "train_loss")
    assert [m.step for m in epochs] == list(range(tiny_params.train.classification.epochs))


def test_the_keras_model_is_logged_with_its_signature_and_input_example(
    trained_project, tiny_params, tracking, mlflow_at
):
    registered = _register(trained_project, tiny_params, tracking)
    mlflow_at(tracking)
    uri = f"runs:/{registered.run_id}/keras_model"
    p = tiny_params.extract.classification
    assert mlflow.models.get_model_info(uri).signature.inputs.to_dict()[0]["tensor-spec"] == {
        "dtype": "uint8",
        "shape": (-1, p.frames, p.size, p.size, 3),
    }
    example = np.asarray(mlflow.pyfunc.load_model(uri).input_example["frames"])  # named by the signature's input
    assert example.shape == (1, p.frames, p.size, p.size, 3)
    assert mlflow.keras.load_model(uri).predict(example.astype(np.uint8), verbose=0).shape == (1, 7)


def test_the_registered_model_takes_a_video_path_or_its_bytes(
    trained_project, tiny_params, tracking, monkeypatch, mlflow_at
):
    from vidops.components.serving import SERVE_PATHS, encode

    _register(trained_project, tiny_params, tracking)
    mlflow_at(tracking)
    model = mlflow.pyfunc.load_model(f"models:/vidops-classifier@{CHALLENGER}")
    clip = sorted(trained_project.raw("demo").glob("rotate/*.mp4"))[0]
    monkeypatch.delenv(SERVE_PATHS, raising=False)
    for posted in (str(clip), "/no/such/file.mp4"):  # a server takes bytes; a path, there or not, gets the same answer
        with pytest.raises(MlflowException, match=r"not base64 file bytes \(paths only where VIDOPS_SERVE_PATHS=1\)"):
            model.predict(pd.DataFrame({"video": [posted]}))
    monkeypatch.setenv(SERVE_PATHS, "1")  # as `vidops predict` runs it
    answers = model.predict(pd.DataFrame({"video": [str(clip), encode(clip)]}))
    assert list(answers["label"]) == [answers["label"][0]] * 2 and answers["label"][0] in MOTIONS
    assert answers.filter(like="p_").sum(axis=1).round(4).tolist() == [1.0, 1.0]
    assert answers["probability"][0] == answers[f"p_{answers['label'][0]}"][0]
    with pytest.raises(MlflowException, match="not an existing file or base64 bytes"):
        model.predict(pd.DataFrame({"video": ["/no/such/file.mp4"]}))
    with pytest.raises(MlflowException, match="not a readable video"):
        model.predict(pd.DataFrame({"video": [base64.b64encode(b"junk" * 100).decode()]}))


class _Said(logging.Handler):
    """Keeps the message of every record a logger hands it."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_the_served_model_is_logged_from_code_without_a_pickle_or_a_cloudpickle_warning(
    trained_project, tiny_params, tracking, tmp_path, monkeypatch, mlflow_at
):
    monkeypatch.setenv("VIDOPS_SERVE_PATHS", "1")  # it predicts on a path, as `vidops predict` does
    said = _Said()
    mlflow_logger = logging.getLogger(
        "mlflow"
    )  # MLflow's loggers do not propagate to the root logger, which caplog watches
    mlflow_logger.addHandler(said)
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            registered = _register(trained_project, tiny_params, tracking)
    finally:
        mlflow_logger.removeHandler(said)
    heard = said.messages + [str(w.message) for w in warned]
    assert not [message for message in heard if "cloudpickle" in message.lower()]

    mlflow_at(tracking)  # models:/ resolves through the process's registry, not the tracking_uri argument
    folder = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/vidops-classifier/{registered.version}",
            dst_path=str(tmp_path / "served"),
            tracking_uri=tracking.uri,
        )
    )
    files = [path for path in folder.rglob("*") if path.is_file()]
    assert not (folder / "python_model.pkl").exists()
    assert not [
        path for path in files if path.suffix in {".pkl", ".pickle"} or path.read_bytes()[:1] == b"\x80"
    ]  # 0x80 opens every pickle since protocol 2
    assert (folder / "served_model.py").is_file() and (
        folder / "code" / "vidops" / "components" / "serving.py"
    ).is_file()
    assert (folder / "serving_input_example.json").is_file()
    pyfunc = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in pyfunc
    assert set(pyfunc["artifacts"]) == {"model", "config"}
    requirements = (folder / "requirements.txt").read_text().split()
    assert f"mlflow=={mlflow.__version__}" in requirements and any(r.startswith("tensorflow==") for r in requirements)

    # loaded where vidops is not installed (its editable install's finder taken away), from the code it carries alone
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # a pickled model would now refuse to load
    clip = sorted(trained_project.raw("demo").glob("zoom_in/*.mp4"))[0]
    bare = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_VIDOPS, str(folder), str(clip)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bare.returncode == 0, bare.stderr[-3000:]
    assert (
        bare.stdout.split()[-2:] == [str(folder / "code" / "vidops" / "__init__.py"), "video"]
        and bare.stdout.split()[-3] in MOTIONS
    )


LOAD_WITHOUT_VIDOPS = """
import sys
sys.meta_path[:] = [finder for finder in sys.meta_path if "__editable__" not in getattr(finder, "__module__", "")]
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
label = model.predict(pd.DataFrame({"video": [sys.argv[2]]}))["label"][0]
print(label, sys.modules["vidops"].__file__, *model.metadata.get_input_schema().input_names())
"""


def test_the_sync_model_registers_under_its_own_name_and_answers_with_an_offset(
    trained_project, tiny_params, tracking, monkeypatch, mlflow_at
):
    monkeypatch.setenv("VIDOPS_SERVE_PATHS", "1")  # it predicts on a path, as `vidops predict` does
    registered = _register(trained_project, tiny_params, tracking, task="sync")
    assert registered.model_name == "vidops-sync"
    assert (
        MlflowClient(tracking.uri)
        .get_model_version("vidops-sync", registered.version)
        .tags[EVALUATED]
        .startswith("accuracy_within_1=")
    )
    mlflow_at(tracking)
    keras_uri = f"runs:/{registered.run_id}/keras_model"
    specs = {
        spec["name"]: spec["tensor-spec"] for spec in mlflow.models.get_model_info(keras_uri).signature.inputs.to_dict()
    }
    assert specs["frames"] == {"dtype": "uint8", "shape": (-1, -1, 16, 16, 3)}  # any window length
    assert specs["audio"] == {"dtype": "float32", "shape": (-1, -1, 4, 40)}
    example = mlflow.pyfunc.load_model(keras_uri).input_example
    assert example["frames"].shape == (1, 4, 16, 16, 3) and example["audio"].shape == (1, 4 + 2 * 3, 4, 40)
    run = MlflowClient(tracking.uri).get_run(registered.run_id)
    assert run.data.params["train.sync.max_offset"] == "3" and run.data.params["datasets.sync"] == "demo-sync"

    clip = sorted(trained_project.raw("demo-sync").rglob("*.mp4"))[0]
    answer = mlflow.pyfunc.load_model(f"models:/vidops-sync@{CHALLENGER}").predict(pd.DataFrame({"video": [str(clip)]}))
    assert -3 <= int(answer["offset"][0]) <= 3 and 0 < answer["confidence"][0] <= 1 and 0 <= answer["in_sync"][0] <= 1


def _mlflow_server(home: Path, port: int) -> dict:
    """A real `mlflow server` on 127.0.0.1:`port`, its store a sqlite file in `home` and its artifacts proxied into
    `home`/artifacts, started in a session of its own (its uvicorn process with it; no job workers, which registration
    does not use and which slow its start on 2 cores); its record for _stop."""
    from vidops.stack.processes import _http, _start

    argv = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination",
        str(home / "artifacts"),
    ]
    home.mkdir(exist_ok=True)
    return _start(
        home,
        "mlflow",
        argv,
        faults.cli_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
        f"http://127.0.0.1:{port}",
        _http("/health"),
    )


def _version_rows(store: Path, name: str) -> list[int]:
    """The model's versions as the server's sqlite store holds them (read beside the running server)."""
    try:
        with closing(sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True, timeout=1)) as db:
            return [row[0] for row in db.execute("SELECT version FROM model_versions WHERE name = ?", (name,))]
    except sqlite3.Error:  # not made yet, or the server holds its lock this moment
        return []


@pytest.mark.slow
def test_an_mlflow_server_killed_during_registration_leaves_no_half_version_in_use_and_the_rerun_registers(
    trained_project, tiny_params, tmp_path
):
    """`vidops stage register` against an MLflow server that is killed (-9, its process group) the moment the new
    version exists: the command fails naming the server; the half-made version holds no alias, and predict, the gate
    and promote refuse it; with the server back, the re-run registers a whole version (sealed, then the challenger)
    into the same run and deletes the half one."""
    from vidops.components.promotion import TestSet, gate, promote
    from vidops.components.registry import CHALLENGER, alias
    from vidops.components.seal import ORIGIN, UNFINISHED, registry_key, trusted_download
    from vidops.components.stages import lineage_tags
    from vidops.components.tracking import open_training_run
    from vidops.stack.processes import _free_port, _stop

    project = Layout(tmp_path / "project")
    shutil.copytree(trained_project.root, project.root, ignore=shutil.ignore_patterns(".vidops"))
    (project.root / "params.yaml").write_text(yaml.safe_dump(tiny_params.to_yaml_dict()))
    port = _free_port()
    server, url = _mlflow_server(tmp_path / "server", port), f"http://127.0.0.1:{port}"
    served, name, task, key = Tracking(url), "vidops-classifier", "classification", registry_key(project)
    try:
        # the training's run, as `vidops stage train` opens it on the server and records it for the registration
        run = open_training_run(
            served,
            tiny_params,
            task,
            "classification-stage",
            lineage_tags(project, tiny_params, task),
            project.raw("demo"),
            project.catalog(task) / "accepted.csv",
        )
        (project.models(task) / "run.json").write_text(json.dumps({"tracking_uri": url, "run_id": run.run_id}))
        env = faults.cli_env(
            MLFLOW_TRACKING_URI=url,
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="1",
            MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
            MLFLOW_HTTP_REQUEST_TIMEOUT="10",
        )  # a user's client would wait out 7 retries
        register = ("stage", "register", "--task", task, "--root", str(project.root))
        command = faults.start(*register, env=env)
        half = faults.until(lambda: _version_rows(tmp_path / "server" / "mlflow.db", name), "a new version", command)[0]
        os.killpg(server["pid"], signal.SIGKILL)
        _, err = command.communicate(timeout=600)
        said = err.strip().splitlines()[-1]  # MLflow's own lines ("Created version '1' ...") may come before it
        assert (
            command.returncode == 1
            and "Traceback" not in err
            and sum(line.startswith("vidops: error") for line in err.splitlines()) == 1
        ), err
        assert (
            said.startswith(f"vidops: error: the MLflow server at {url} did not answer (")
            and f"while registering {name}" in said
        ), err
        assert (
            f"tagged {UNFINISHED}: never loaded, gated or promoted, and the next registration from this run deletes it"
            in said
        ), err

        server = _mlflow_server(tmp_path / "server", port)  # back, on the same store
        client = MlflowClient(url)
        left = client.get_model_version(name, str(half))
        assert UNFINISHED in left.tags and not left.aliases and alias(client, name, CHALLENGER) is None
        with pytest.raises(
            VidopsError, match=f"models:/{name}/{half}: its registration from run {run.run_id} .* has not finished"
        ):
            trusted_download(
                served, name, str(half), key, tmp_path / "download"
            )  # what predict and the gate load through
        test = TestSet(
            project.raw("demo"),
            project.catalog(task) / "accepted.csv",
            project.features(task),
            tiny_params.extract.classification,
        )
        with pytest.raises(VidopsError, match="only whole versions are promoted"):
            gate(served, name, str(half), tiny_params.registry.classification, 0.0, test, tmp_path / "gate", key)
        with pytest.raises(VidopsError, match="only whole versions are promoted"):
            promote(served, name, str(half), "by hand")

        again = faults.run(*register, env=env)
        assert again.returncode == 0, again.stderr
        said = again.stdout.strip().splitlines()[
            -1
        ]  # after MLflow's links to the run, which it prints for a server's runs
        whole = said.split("version ")[1].split(",")[0]
        assert (
            said == f"register {task}: {name} version {whole}, MLflow run {run.run_id}"
        )  # into the same run as the killed attempt
        versions = {str(v.version): v for v in client.search_model_versions(f"name = '{name}'")}
        assert (
            list(versions) == [whole] and ORIGIN in versions[whole].tags and UNFINISHED not in versions[whole].tags
        )  # the half one is gone
        assert str(alias(client, name, CHALLENGER).version) == whole
        assert (trusted_download(served, name, whole, key, tmp_path / "whole") / "MLmodel").is_file()  # its seal holds
    finally:
        _stop([server])


@pytest.mark.slow
def test_s3_killed_while_mlflow_uploads_a_model_leaves_no_version_and_a_rerun_after_its_restart_registers(
    trained_project, tiny_params, tmp_path
):
    """The registry's experiment keeps its artifacts in the project's S3 (as one the stack made): `vidops stage
    register` starts SeaweedFS for them, which is killed (-9) once the first artifact is there. The command fails naming
    the S3; no version exists of the half-uploaded model, whose run is FAILED; the re-run (SeaweedFS started again)
    registers."""
    from vidops.components.seal import ORIGIN, UNFINISHED
    from vidops.stack.seaweedfs import ARTIFACTS

    project = Layout(tmp_path / "project")
    shutil.copytree(trained_project.root, project.root, ignore=shutil.ignore_patterns(".vidops"))
    (project.root / "params.yaml").write_text(yaml.safe_dump(tiny_params.to_yaml_dict()))
    project.state.mkdir()
    store = MlflowClient(f"sqlite:///{project.state / 'mlflow.db'}")
    experiment = store.create_experiment(tiny_params.registry.experiment, artifact_location=f"{ARTIFACTS}/1")
    register = ("stage", "register", "--task", "classification", "--root", str(project.root))

    for attempt in range(3):  # the upload takes a moment: a loaded machine may see it whole before the first poll
        command = faults.start(*register)
        client = faults.s3_client(faults.until(lambda: faults.s3_of(project.root), "the project's S3", command))
        record = json.loads((project.state / "s3" / "running.json").read_text())
        try:
            faults.until(
                lambda client=client: faults.keys(client, "mlflow/"), "a first artifact in S3", command, every_s=0.01
            )
            break
        except faults.Ended:  # registered whole: undo it, and try again
            assert command.returncode == 0 and attempt < 2
            store.delete_registered_model("vidops-classifier")
            for run in store.search_runs([experiment]):
                store.delete_run(run.info.run_id)
    os.kill(record["pid"], signal.SIGKILL)
    _, err = command.communicate(timeout=600)
    said = err.strip().splitlines()[-1]
    assert (
        command.returncode == 1
        and "Traceback" not in err
        and sum(line.startswith("vidops: error") for line in err.splitlines()) == 1
    ), err
    assert said.startswith(
        f"vidops: error: the project's S3 (SeaweedFS at {record['url']}, pid {record['pid']}) "
        "stopped while the command ran"
    ), err
    assert f"the S3 store of MLflow's artifacts at {record['url']} did not answer" in said, err
    assert not store.search_model_versions(
        "name = 'vidops-classifier'"
    )  # nothing registered of a model whose files did not all arrive
    (failed,) = store.search_runs([experiment])
    assert failed.info.status == "FAILED"

    again = faults.run(*register)
    assert again.returncode == 0, again.stderr
    (version,) = store.search_model_versions("name = 'vidops-classifier'")
    assert again.stdout.startswith(f"register classification: vidops-classifier version {version.version}, MLflow run ")
    assert (
        ORIGIN in version.tags and UNFINISHED not in version.tags
    )  # sealed: its files were downloaded whole from the restarted S3
    assert version.source.startswith("models:/") and store.get_run(version.run_id).info.artifact_uri.startswith(
        f"{ARTIFACTS}/1/"
    )

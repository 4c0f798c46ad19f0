import base64
import json
import logging
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from components.generate import MOTIONS
from components.registry import CHALLENGER, CHAMPION, EVALUATED, Tracking, register_model
from components.validation import REPORT


@pytest.fixture
def tracking(tmp_path: Path) -> Tracking:
    return Tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=(tmp_path / "artifacts").as_uri())


def _register(project, params, tracking, task="classification", metrics=None, tags=None):
    return register_model(project.models(task), project.features(task), project.raw(params.datasets.of(task)), metrics or project.reports(task) / "metrics.json",
                          project.catalog(task) / REPORT, params, task, tracking, tags or {})  # fmt: skip


def test_a_registered_version_is_the_challenger_with_its_evaluation_params_data_and_curves(trained_project, tiny_params, tracking):
    first = _register(trained_project, tiny_params, tracking, tags={"vidops.dataset": "d"})
    second = _register(trained_project, tiny_params, tracking)
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


def test_the_keras_model_is_logged_with_its_signature_and_input_example(trained_project, tiny_params, tracking):
    registered = _register(trained_project, tiny_params, tracking)
    mlflow.set_tracking_uri(tracking.uri)
    uri = f"runs:/{registered.run_id}/keras_model"
    p = tiny_params.extract.classification
    assert mlflow.models.get_model_info(uri).signature.inputs.to_dict()[0]["tensor-spec"] == {"dtype": "uint8", "shape": (-1, p.frames, p.size, p.size, 3)}
    example = np.asarray(mlflow.pyfunc.load_model(uri).input_example["frames"])  # named by the signature's input
    assert example.shape == (1, p.frames, p.size, p.size, 3)
    assert mlflow.keras.load_model(uri).predict(example.astype(np.uint8), verbose=0).shape == (1, 7)


def test_the_registered_model_takes_a_video_path_or_its_bytes(trained_project, tiny_params, tracking, monkeypatch):
    from components.serving import SERVE_PATHS, encode

    _register(trained_project, tiny_params, tracking)
    mlflow.set_tracking_uri(tracking.uri)
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


def test_the_served_model_is_logged_from_code_without_a_pickle_or_a_cloudpickle_warning(trained_project, tiny_params, tracking, tmp_path, monkeypatch):
    monkeypatch.setenv("VIDOPS_SERVE_PATHS", "1")  # it predicts on a path, as `vidops predict` does
    said = _Said()
    mlflow_logger = logging.getLogger("mlflow")  # MLflow's loggers do not propagate to the root logger, which caplog watches
    mlflow_logger.addHandler(said)
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            registered = _register(trained_project, tiny_params, tracking)
    finally:
        mlflow_logger.removeHandler(said)
    heard = said.messages + [str(w.message) for w in warned]
    assert not [message for message in heard if "cloudpickle" in message.lower()]

    folder = Path(mlflow.artifacts.download_artifacts(f"models:/vidops-classifier/{registered.version}", dst_path=str(tmp_path / "served"), tracking_uri=tracking.uri))
    files = [path for path in folder.rglob("*") if path.is_file()]
    assert not (folder / "python_model.pkl").exists()
    assert not [path for path in files if path.suffix in {".pkl", ".pickle"} or path.read_bytes()[:1] == b"\x80"]  # 0x80 opens every pickle since protocol 2
    assert (folder / "served_model.py").is_file() and (folder / "code" / "components" / "serving.py").is_file()
    assert (folder / "serving_input_example.json").is_file()
    pyfunc = yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in pyfunc
    assert set(pyfunc["artifacts"]) == {"model", "config"}
    requirements = (folder / "requirements.txt").read_text().split()
    assert f"mlflow=={mlflow.__version__}" in requirements and any(r.startswith("tensorflow==") for r in requirements)

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # a pickled model would now refuse to load
    model = mlflow.pyfunc.load_model(str(folder))
    assert model.metadata.get_input_schema().input_names() == ["video"]
    clip = sorted(trained_project.raw("demo").glob("zoom_in/*.mp4"))[0]
    assert model.predict(pd.DataFrame({"video": [str(clip)]}))["label"][0] in MOTIONS


def test_the_sync_model_registers_under_its_own_name_and_answers_with_an_offset(trained_project, tiny_params, tracking, monkeypatch):
    monkeypatch.setenv("VIDOPS_SERVE_PATHS", "1")  # it predicts on a path, as `vidops predict` does
    registered = _register(trained_project, tiny_params, tracking, task="sync")
    assert registered.model_name == "vidops-sync"
    assert MlflowClient(tracking.uri).get_model_version("vidops-sync", registered.version).tags[EVALUATED].startswith("accuracy_within_1=")
    mlflow.set_tracking_uri(tracking.uri)
    keras_uri = f"runs:/{registered.run_id}/keras_model"
    specs = {spec["name"]: spec["tensor-spec"] for spec in mlflow.models.get_model_info(keras_uri).signature.inputs.to_dict()}
    assert specs["frames"] == {"dtype": "uint8", "shape": (-1, -1, 16, 16, 3)}  # any window length
    assert specs["audio"] == {"dtype": "float32", "shape": (-1, -1, 4, 40)}
    example = mlflow.pyfunc.load_model(keras_uri).input_example
    assert example["frames"].shape == (1, 4, 16, 16, 3) and example["audio"].shape == (1, 4 + 2 * 3, 4, 40)
    run = MlflowClient(tracking.uri).get_run(registered.run_id)
    assert run.data.params["train.sync.max_offset"] == "3" and run.data.params["datasets.sync"] == "demo-sync"

    clip = sorted(trained_project.raw("demo-sync").rglob("*.mp4"))[0]
    answer = mlflow.pyfunc.load_model(f"models:/vidops-sync@{CHALLENGER}").predict(pd.DataFrame({"video": [str(clip)]}))
    assert -3 <= int(answer["offset"][0]) <= 3 and 0 < answer["confidence"][0] <= 1 and 0 <= answer["in_sync"][0] <= 1

import json
import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from components.registry import CHAMPION, Tracking, register_model
from components.validation import REPORT


@pytest.fixture
def tracking(tmp_path: Path) -> Tracking:
    return Tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=(tmp_path / "artifacts").as_uri())


def _register(project, params, tracking, task="classification", metrics=None, tags=None):
    return register_model(project.models(task), project.features(task), metrics or project.reports(task) / "metrics.json",
                          project.catalog(task) / REPORT, params, task, tracking, tags or {})  # fmt: skip


def _with_accuracy(trained_project, tmp_path: Path, accuracy: float) -> Path:
    """A copy of the evaluation with another accuracy, as another training run would have written it."""
    reports = Path(tempfile.mkdtemp(dir=tmp_path))
    shutil.copytree(trained_project.reports("classification"), reports, dirs_exist_ok=True)
    metrics = json.loads((reports / "metrics.json").read_text())
    (reports / "metrics.json").write_text(json.dumps({**metrics, "accuracy": accuracy}))
    return reports / "metrics.json"


def test_champion_is_the_first_model_then_only_a_better_one(trained_project, tiny_params, tracking, tmp_path):
    first = _register(trained_project, tiny_params, tracking, metrics=_with_accuracy(trained_project, tmp_path, 0.5), tags={"vidops.dataset": "d"})
    same = _register(trained_project, tiny_params, tracking, metrics=_with_accuracy(trained_project, tmp_path, 0.5))
    better = _register(trained_project, tiny_params, tracking, metrics=_with_accuracy(trained_project, tmp_path, 0.75))

    assert (first.version, first.champion) == ("1", True)
    assert (same.version, same.champion) == ("2", False)
    assert "does not beat champion v1" in same.reason
    assert (better.version, better.champion) == ("3", True)

    client = MlflowClient(tracking.uri)
    name = tiny_params.registry.classification.model_name
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "3"
    assert client.get_model_version(name, "2").tags["vidops.decision"] == "not promoted"
    run = client.get_run(first.run_id)
    assert run.data.metrics["accuracy"] == 0.5
    assert run.data.params["train.classification.epochs"] == str(tiny_params.train.classification.epochs)
    assert not any(key.startswith(("train.sync", "extract.sync")) for key in run.data.params)  # only this task's params
    assert run.data.tags["vidops.dataset"] == "d" and run.data.tags["vidops.task"] == "classification"
    assert run.data.metrics["clips_accepted"] == 21 and run.data.metrics["clips_quarantined"] == 0
    artifacts = {a.path for a in client.list_artifacts(first.run_id)}
    assert {"training_curves.png", "evaluation", "validation", "labels.json"} <= artifacts
    epochs = client.get_metric_history(first.run_id, "train_loss")
    assert [m.step for m in epochs] == list(range(tiny_params.train.classification.epochs))


def test_the_champion_loads_from_the_registry_with_its_signature_and_input_example(trained_project, tiny_params, tracking):
    _register(trained_project, tiny_params, tracking)
    mlflow.set_tracking_uri(tracking.uri)
    uri = f"models:/{tiny_params.registry.classification.model_name}@{CHAMPION}"
    info = mlflow.models.get_model_info(uri)
    p = tiny_params.extract.classification
    assert info.signature.inputs.to_dict()[0]["tensor-spec"] == {"dtype": "uint8", "shape": (-1, p.frames, p.size, p.size, 3)}
    model = mlflow.pyfunc.load_model(uri)
    example = model.input_example["frames"]  # named by the signature's input
    assert np.asarray(example).shape == (1, p.frames, p.size, p.size, 3)
    assert np.asarray(model.predict(np.zeros((2, p.frames, p.size, p.size, 3), np.uint8))).shape == (2, 7)


def test_the_sync_model_registers_under_its_own_name_with_two_inputs(trained_project, tiny_params, tracking):
    registered = _register(trained_project, tiny_params, tracking, task="sync")
    assert registered.model_name == "vidops-sync" and registered.champion
    assert "accuracy_within_1" in registered.reason
    mlflow.set_tracking_uri(tracking.uri)
    uri = f"models:/vidops-sync@{CHAMPION}"
    specs = {spec["name"]: spec["tensor-spec"] for spec in mlflow.models.get_model_info(uri).signature.inputs.to_dict()}
    assert specs["frames"] == {"dtype": "uint8", "shape": (-1, -1, 16, 16, 3)}  # any window length
    assert specs["audio"] == {"dtype": "float32", "shape": (-1, -1, 4, 40)}
    example = mlflow.pyfunc.load_model(uri).input_example
    assert example["frames"].shape == (1, 4, 16, 16, 3) and example["audio"].shape == (1, 4 + 2 * 3, 4, 40)
    out = mlflow.keras.load_model(uri).predict({k: np.asarray(v) for k, v in example.items()}, verbose=0)
    assert out["offset"].shape == (1, 7) and out["in_sync"].shape == (1, 1)
    run = MlflowClient(tracking.uri).get_run(registered.run_id)
    assert run.data.params["train.sync.max_offset"] == "3" and run.data.params["datasets.sync"] == "demo-sync"

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
from flows.stages import TASK


@pytest.fixture
def tracking(tmp_path: Path) -> Tracking:
    return Tracking(f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=(tmp_path / "artifacts").as_uri())


def _with_accuracy(trained_project, tmp_path: Path, accuracy: float) -> Path:
    """A copy of the evaluation with another accuracy, as another training run would have written it."""
    reports = Path(tempfile.mkdtemp(dir=tmp_path))
    shutil.copytree(trained_project.reports(TASK), reports, dirs_exist_ok=True)
    metrics = json.loads((reports / "metrics.json").read_text())
    (reports / "metrics.json").write_text(json.dumps({**metrics, "accuracy": accuracy}))
    return reports / "metrics.json"


def test_champion_is_the_first_model_then_only_a_better_one(trained_project, tiny_params, tracking, tmp_path):
    models, report = trained_project.models(TASK), trained_project.catalog / REPORT
    first = register_model(models, _with_accuracy(trained_project, tmp_path, 0.5), report, tiny_params, tracking, {"vidops.dataset": "d"})
    same = register_model(models, _with_accuracy(trained_project, tmp_path, 0.5), report, tiny_params, tracking, {})
    better = register_model(models, _with_accuracy(trained_project, tmp_path, 0.75), report, tiny_params, tracking, {})

    assert (first.version, first.champion) == ("1", True)
    assert (same.version, same.champion) == ("2", False)
    assert "does not beat champion v1" in same.reason
    assert (better.version, better.champion) == ("3", True)

    client = MlflowClient(tracking.uri)
    name = tiny_params.registry.model_name
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == "3"
    assert client.get_model_version(name, "2").tags["vidops.decision"] == "not promoted"
    run = client.get_run(first.run_id)
    assert run.data.metrics["accuracy"] == 0.5
    assert run.data.params["train.classifier.epochs"] == str(tiny_params.train.classifier.epochs)
    assert run.data.tags["vidops.dataset"] == "d"
    assert run.data.metrics["clips_accepted"] == 21 and run.data.metrics["clips_quarantined"] == 0
    artifacts = {a.path for a in client.list_artifacts(first.run_id)}
    assert {"training_curves.png", "evaluation", "validation", "labels.json"} <= artifacts
    epochs = client.get_metric_history(first.run_id, "train_loss")
    assert [m.step for m in epochs] == list(range(tiny_params.train.classifier.epochs))


def test_the_champion_loads_from_the_registry_with_its_signature(trained_project, tiny_params, tracking):
    metrics = trained_project.reports(TASK) / "metrics.json"
    register_model(trained_project.models(TASK), metrics, trained_project.catalog / REPORT, tiny_params, tracking, {})
    mlflow.set_tracking_uri(tracking.uri)
    uri = f"models:/{tiny_params.registry.model_name}@{CHAMPION}"
    inputs = mlflow.models.get_model_info(uri).signature.inputs.to_dict()[0]
    p = tiny_params.extract
    assert inputs["tensor-spec"] == {"dtype": "uint8", "shape": (-1, p.frames, p.size, p.size, 3)}
    model = mlflow.pyfunc.load_model(uri)
    clip = np.zeros((2, p.frames, p.size, p.size, 3), np.uint8)
    assert np.asarray(model.predict(clip)).shape == (2, 7)

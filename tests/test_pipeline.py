"""The wired pipeline through a real Prefect API and a real MLflow store, on the tiny dataset."""

import hashlib
import json

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client

from components.registry import CHAMPION
from flows.pipeline import training_pipeline
from flows.profiles import tracking
from flows.stages import TASK

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _embedded_mlflow(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_training_pipeline_registers_a_champion_and_a_second_run_works(prefect_api, project, tiny_params):
    (project.raw("demo") / "rotate" / "garbage.mp4").write_bytes(b"not a video")
    first = training_pipeline(root=str(project.root))

    # only accepted clips reach extraction
    assert (first.summary.accepted, first.summary.quarantined) == (21, 1)
    index = json.loads((project.features(TASK) / "index.json").read_text())
    assert sum(index["clips"].values()) == 21

    second = training_pipeline(root=str(project.root), overrides=["train.classifier.epochs=1"])

    client = MlflowClient(tracking(project).uri)
    name = tiny_params.registry.model_name
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    assert versions == [1, 2]
    champion = client.get_model_version_by_alias(name, CHAMPION)
    assert str(champion.version) == ("2" if second.registration.champion else "1")
    assert first.registration.champion

    run = client.get_run(first.registration.run_id)
    metrics = json.loads((project.reports(TASK) / "metrics.json").read_text())
    assert run.data.metrics["accuracy"] == first.evaluation.metrics["accuracy"]
    assert set(metrics) <= set(run.data.metrics)
    assert run.data.params["train.classifier.epochs"] == "2"
    assert client.get_run(second.registration.run_id).data.params["train.classifier.epochs"] == "1"

    accepted = (project.catalog / "accepted.csv").read_bytes()
    assert run.data.tags["vidops.manifest_sha256"] == hashlib.sha256(accepted).hexdigest()
    flow_run_id = run.data.tags["vidops.prefect_flow_run_id"]
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(flow_run_id)
        assert flow_run.state.is_completed()
        tasks = prefect.read_task_runs()
        artifacts = {a.key: a for a in prefect.read_artifacts() if a.flow_run_id == flow_run.id}
    names = {t.name.rsplit("-", 1)[0] for t in tasks if t.flow_run_id == flow_run.id}
    assert names == {"validate_dataset", "extract_features", "train_classifier", "evaluate_classifier", "register_model"}
    assert {"validation-summary", "extraction-progress", "training-report"} <= set(artifacts)
    assert artifacts["extraction-progress"].data == 100
    assert "quarantined" in str(artifacts["validation-summary"].data)
    registration = json.loads((project.reports(TASK) / "registration.json").read_text())
    assert registration["version"] == "2"


def test_a_failing_stage_fails_the_flow_with_the_clear_error(prefect_api, project):
    for clip in project.raw("demo").glob("rotate/*.mp4"):
        clip.write_bytes(b"truncated")
    with pytest.raises(Exception, match="rotate has 0"):
        training_pipeline(root=str(project.root))

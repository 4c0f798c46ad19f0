"""The wired pipeline through a real Prefect API and a real MLflow store, on the tiny datasets."""

import hashlib
import json

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter

from vidops.components import tracking
from vidops.components.registry import CHAMPION
from vidops.flows.pipeline import training_pipeline

TASKS = ("classification", "sync")


@pytest.fixture(autouse=True)
def _embedded_mlflow(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.mark.slow
def test_training_pipeline_trains_both_models_registers_champions_and_a_second_run_works(
    prefect_api, project, tiny_params
):
    (project.raw("demo") / "rotate" / "garbage.mp4").write_bytes(b"not a video")
    first = training_pipeline(root=str(project.root))

    # only accepted clips reach extraction
    classification = first.tasks["classification"]
    assert (classification.summary.accepted, classification.summary.quarantined) == (21, 1)
    index = json.loads((project.features("classification") / "index.json").read_text())
    assert sum(index["clips"].values()) == 21
    assert first.tasks["sync"].summary.accepted == 4

    second = training_pipeline(
        root=str(project.root), overrides=["train.classification.epochs=1", "tasks=[classification]"]
    )
    assert list(second.tasks) == ["classification"]

    client = MlflowClient(tracking.locate(project).uri)
    for task, runs in (("classification", 2), ("sync", 1)):
        name = tiny_params.registry.of(task).model_name
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        assert versions == list(range(1, runs + 1))
        assert first.tasks[task].decision.champion
    champion = client.get_model_version_by_alias("vidops-classifier", CHAMPION)
    gated = second.tasks["classification"].decision
    assert gated.champion_version == "1" and str(champion.version) == ("2" if gated.champion else "1")

    for task in TASKS:
        run = client.get_run(first.tasks[task].registration.run_id)
        metrics = json.loads((project.reports(task) / "metrics.json").read_text())
        assert set(metrics) <= set(run.data.metrics)
        accepted = (project.catalog(task) / "accepted.csv").read_bytes()
        assert run.data.tags["vidops.manifest_sha256"] == hashlib.sha256(accepted).hexdigest()
        assert run.data.tags["vidops.task"] == task
        # the training's own run, logged live: a point a epoch, and the dataset as its input
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [
            0,
            1,
        ] and run.info.status == "FINISHED"
        assert run.inputs.dataset_inputs[0].dataset.name == tiny_params.datasets.of(task)
    run = client.get_run(first.tasks["classification"].registration.run_id)
    assert run.data.params["train.classification.epochs"] == "2"
    assert (
        client.get_run(second.tasks["classification"].registration.run_id).data.params["train.classification.epochs"]
        == "1"
    )

    flow_run_id = run.data.tags["vidops.prefect_flow_run_id"]
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(flow_run_id)
        assert flow_run.state.is_completed()
        tasks = prefect.read_task_runs()
        artifacts = {a.key: a for a in prefect.read_artifacts() if a.flow_run_id == flow_run.id}
        promotion = next(
            r
            for r in prefect.read_flow_runs()
            if r.parent_task_run_id in {t.id for t in tasks if t.flow_run_id == flow_run.id}
        )
        gate_artifacts = {a.key: a for a in prefect.read_artifacts() if a.flow_run_id == promotion.id}
    assert {t.name for t in tasks if t.flow_run_id == promotion.id} == {f"promote-{task}" for task in TASKS}
    assert "first model to pass the floor" in gate_artifacts["promotion-sync"].data
    names = {t.name for t in tasks if t.flow_run_id == flow_run.id and t.id != promotion.parent_task_run_id}
    assert names == {
        f"{stage}-{task}" for stage in ("validate", "extract", "train", "evaluate", "register") for task in TASKS
    } | {"record-dvc-lock"}
    for task in TASKS:
        assert {f"validation-summary-{task}", f"extraction-progress-{task}", f"training-progress-{task}"} <= set(
            artifacts
        )
        assert artifacts[f"extraction-progress-{task}"].data == artifacts[f"training-progress-{task}"].data == 100
    # vidops's own messages are in the flow run's logs: each stage's start and result, each epoch, the gate's decision
    with get_client(sync_client=True) as prefect:
        messages = [
            entry.message
            for entry in prefect.read_logs(log_filter=LogFilter(flow_run_id={"any_": [flow_run.id, promotion.id]}))
        ]
    for task in TASKS:
        assert f"validate {task}: started" in messages and any(
            m.startswith(f"train {task}: epoch 2/2 ") and " loss=" in m for m in messages
        ), messages
        assert any(m.startswith(f"promote {task}: ") and "first model to pass the floor" in m for m in messages), (
            messages
        )
    assert "dvc.lock not updated: the project has no dvc.yaml" in messages
    assert client.get_run(first.tasks["sync"].registration.run_id).info.run_name == f"sync-{flow_run.name}"
    assert "quarantined" in str(artifacts["validation-summary-classification"].data)
    assert "offset within +-1 frame" in artifacts["training-report"].data
    registration = json.loads((project.reports("classification") / "registration.json").read_text())
    assert registration["version"] == "2"

    def states(result) -> dict[str, str]:
        """Each stage's task run state in the run that made `result`'s classification registration."""
        run_id = client.get_run(result.tasks["classification"].registration.run_id).data.tags[
            "vidops.prefect_flow_run_id"
        ]
        with get_client(sync_client=True) as prefect:
            runs = [
                t
                for t in prefect.read_task_runs()
                if str(t.flow_run_id) == run_id and t.name.endswith("-classification")
            ]
        return {t.name.removesuffix("-classification"): t.state.name for t in runs}

    # the second run: only training changed, so validation and extraction came from the cache
    assert states(second) == {
        "validate": "Cached",
        "extract": "Cached",
        "train": "Completed",
        "evaluate": "Completed",
        "register": "Completed",
    }
    assert (project.state / "results").is_dir()
    unchanged = training_pipeline(
        root=str(project.root), overrides=["train.classification.epochs=1", "tasks=[classification]"]
    )
    assert (
        unchanged.tasks["classification"].registration == second.tasks["classification"].registration
    )  # no new version
    assert unchanged.tasks["classification"].decision.version == "2"
    refreshed = training_pipeline(
        root=str(project.root), overrides=["train.classification.epochs=1", "tasks=[classification]"], refresh=True
    )
    assert (
        set(states(refreshed).values()) == {"Completed"}
        and refreshed.tasks["classification"].registration.version == "3"
    )


@pytest.mark.slow
def test_a_failing_stage_fails_the_flow_with_the_clear_error(prefect_api, project):
    for clip in project.raw("demo").glob("rotate/*.mp4"):
        clip.write_bytes(b"truncated")
    with pytest.raises(Exception, match="rotate has 0"):
        training_pipeline(root=str(project.root))


@pytest.mark.slow
def test_a_missing_dataset_fails_the_flow_before_any_work(prefect_api, project):
    with pytest.raises(Exception, match="demo-elsewhere: no such dataset"):
        training_pipeline(root=str(project.root), overrides=["datasets.sync=demo-elsewhere"])
    assert not (project.root / "data" / "catalog").exists()


def test_only_what_the_network_did_is_retried():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE
    from prefect.states import Completed, Failed

    from vidops.flows.pipeline import NETWORK, register, transient

    assert register.retries == NETWORK["retries"] == 3 and register.retry_jitter_factor == 0.5
    assert transient(None, None, Failed(data=ConnectionRefusedError(111, "Connection refused")))
    assert transient(
        None,
        None,
        Failed(data=MlflowException("API request to http://127.0.0.1:5000 failed: Max retries exceeded with url")),
    )
    assert transient(None, None, Failed(data=MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE)))
    assert not transient(
        None, None, Failed(data=MlflowException("no such version", error_code=INVALID_PARAMETER_VALUE))
    )
    assert not transient(None, None, Failed(data=ValueError("a shard is cut short")))
    assert not transient(
        None, None, Failed(data=FileNotFoundError(2, "No such file or directory", "models/classification/model.keras"))
    )
    assert not transient(None, None, Completed())
    from vidops.components.errors import Unreachable, VidopsError

    # what registration says of a server that did not answer is the network's; any other VidopsError is not
    assert transient(
        None,
        None,
        Failed(
            data=Unreachable(
                "the MLflow server at http://127.0.0.1:5000 did not answer (connection refused) while registering"
            )
        ),
    )
    assert not transient(
        None, None, Failed(data=VidopsError("models/classification/history.json: not a training's history"))
    )


def test_a_cached_registration_counts_only_while_the_registry_holds_its_version(tmp_path):
    from vidops.components import stages
    from vidops.components.io import write_json
    from vidops.components.layout import Layout

    layout = Layout(tmp_path)
    write_json(
        layout.reports("classification") / "registration.json",
        {"model_name": "vidops-classifier", "version": "1", "run_id": "r", "experiment_id": "1"},
    )
    assert not stages.outputs_present(
        "register", layout, "classification"
    )  # a reset (here: empty) registry: register again
    client = MlflowClient(tracking.locate(layout).uri)
    client.create_registered_model("vidops-classifier")
    client.create_model_version("vidops-classifier", source=(tmp_path / "model").as_uri())
    assert stages.outputs_present("register", layout, "classification")

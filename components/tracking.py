"""Tracking: where MLflow lives for a project, and the MLflow run a training reports to as it goes.

A server that does not answer while vidops talks to it (the MLflow server, or the S3 its artifacts are in) is an
`Unreachable` error naming it (`answering`), not a client library's traceback.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidops.components.errors import Unreachable
from vidops.components.layout import RUN_FILE, Layout
from vidops.components.params import Params, Task

# a run's tag once a model of it is registered: the next registration opens a run of its own
REGISTERED = "vidops.registered"


@dataclass(frozen=True)
class Tracking:
    """Where MLflow lives: a tracking URI, and the artifact root for experiments that vidops creates."""

    uri: str
    artifact_root: str | None = None


def locate(layout: Layout) -> Tracking:
    """Where the project's MLflow lives: MLFLOW_TRACKING_URI when set (the stack's, a cluster's), else the embedded
    store."""
    if "MLFLOW_TRACKING_URI" in os.environ:
        return Tracking(os.environ["MLFLOW_TRACKING_URI"])
    return embedded(layout)


def embedded(layout: Layout) -> Tracking:
    """The project's own MLflow store, which the stack's server serves too: one registry whichever profile is up."""
    state = layout.state
    return Tracking(f"sqlite:///{state / 'mlflow.db'}", artifact_root=(state / "mlartifacts").as_uri())


@dataclass(frozen=True)
class TrainingRun:
    """The MLflow run a training reports to as it goes; registration later logs the model into it."""

    tracking_uri: str
    run_id: str

    def log_epoch(self, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        """One epoch's metrics, at step `epoch`: `train_<name>`, `val_<name>` and the learning rate (an EpochHook)."""
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        named = {
            name if name.startswith("val_") or name == "learning_rate" else f"train_{name}": value
            for name, value in metrics.items()
        }
        MlflowClient(self.tracking_uri).log_batch(
            self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in named.items()], synchronous=True
        )

    def end(self, failed: bool = False) -> None:
        from mlflow import MlflowClient

        MlflowClient(self.tracking_uri).set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


@contextmanager
def fluent_at(tracking: Tracking) -> Iterator[None]:
    """MLflow's fluent API (start_run, register_model, models:/ URIs) at `tracking`, for the block only.
    mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI, which `locate` trusts: left behind, it
    would send every later stage of a long-lived process (a Prefect worker, a test session) to this store."""
    import mlflow
    from mlflow.tracking._tracking_service import utils  # its _tracking_uri: None until set, unlike get_tracking_uri()

    before, exported = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking.uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)
        if exported is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = exported


def open_training_run(
    tracking: Tracking,
    params: Params,
    task: Task,
    run_name: str,
    tags: dict[str, str],
    dataset_dir: Path,
    accepted: Path,
) -> TrainingRun:
    """Start the task's MLflow run before training: named `run_name`, with the task's params, its lineage tags and the
    dataset as the run's input (name, DVC version as digest, the accepted clips)."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    client = MlflowClient(tracking.uri)
    tree = params.to_yaml_dict()
    # this task's, not the other's
    logged = {group: {task: tree[group][task]} for group in ("datasets", "extract", "train")}
    with answering(tracking, f"opening the {task} training's run"), fluent_at(tracking):
        run = client.create_run(
            experiment_id(params.registry.experiment, tracking), run_name=run_name, tags={"vidops.task": task, **tags}
        )
        with mlflow.start_run(run_id=run.info.run_id):
            mlflow.log_params(flatten(logged))
            version = tags.get("vidops.dataset_version", "").removesuffix(".dir")
            clips = pd.read_csv(accepted, dtype=str, keep_default_na=False)[["path", "label", "group", "split"]]
            # MLflow 3.17 registers its local source class twice, then warns that a path fits both
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                data = mlflow.data.from_pandas(
                    clips, source=str(dataset_dir), name=dataset_dir.name, digest=version or None
                )
            mlflow.log_input(data, context="training")
        # the block above ended the run FINISHED: it runs until the training ends it (TrainingRun.end), and a training
        # killed on the way leaves it RUNNING, which the next one ends as KILLED: a killed training never looks finished
        client.update_run(run.info.run_id, status="RUNNING")
    return TrainingRun(tracking.uri, run.info.run_id)


def end_abandoned_run(model_dir: Path, tracking: Tracking) -> str | None:
    """End as KILLED the run that the model folder's last training opened in this store and did not live to end (a
    kill -9 leaves it RUNNING for good); its id, or None when there is none."""
    from mlflow import MlflowClient

    found = recorded_run(model_dir, tracking)
    if found is None:
        return None
    recorded, run = found
    if run.info.status != "RUNNING":
        return None
    MlflowClient(tracking.uri).set_terminated(recorded.run_id, "KILLED")
    return recorded.run_id


def training_run(model_dir: Path, tracking: Tracking) -> TrainingRun | None:
    """The run the model's training reported to, when it is in this store and holds no registered model yet."""
    found = recorded_run(model_dir, tracking)
    if found is None:
        return None
    recorded, run = found
    return None if REGISTERED in run.data.tags else recorded


def recorded_run(model_dir: Path, tracking: Tracking) -> tuple[TrainingRun, Any] | None:
    """The run the model folder's training recorded (`run.json`) and MLflow's view of it, when it is in this store."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    path = model_dir / RUN_FILE
    if not path.is_file():
        return None
    found = TrainingRun(**json.loads(path.read_text()))
    if found.tracking_uri != tracking.uri:
        return None
    try:
        return found, MlflowClient(tracking.uri).get_run(found.run_id)
    except MlflowException:  # the store was reset since
        return None


_NO_ANSWER = {  # what clients say of a server that is gone, and how it is told
    "Connection refused": "connection refused",
    "Could not connect to the endpoint URL": "connection refused",
    "RemoteDisconnected": "the server closed the connection",
    "Connection aborted": "the server closed the connection",
    "Connection was closed": "the server closed the connection",
    "Connection broken": "the server closed the connection mid-answer",
    "Connection reset": "the server reset the connection",
    "timed out": "timed out",
    "Max retries exceeded": "no answer",
}


@contextmanager
def answering(tracking: Tracking, doing: str) -> Iterator[None]:
    """A service that does not answer while the block runs (the MLflow server, or the S3 its artifacts are in) is an
    Unreachable error naming it, what was being done and how it failed, not a client library's traceback."""
    try:
        yield
    except Unreachable:
        raise
    except Exception as exc:
        service, why = _silent(exc, tracking)
        if service is None:
            raise
        raise Unreachable(f"{service} did not answer ({why}) while {doing}") from None


def _silent(exc: BaseException, tracking: Tracking) -> tuple[str | None, str]:
    """(the service that did not answer, how), or (None, "") for any other failure. The causes are read too: MLflow
    re-raises a refused connection as "Failed to get logged model ... may have been deleted"."""
    from botocore.exceptions import ConnectionError as NoConnection
    from botocore.exceptions import HTTPClientError
    from mlflow.exceptions import MlflowException
    from requests.exceptions import ConnectionError as Refused

    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            break
        text = str(seen)
        why = next((said for needle, said in _NO_ANSWER.items() if needle in text), "")
        if isinstance(seen, (NoConnection, HTTPClientError)) or "Could not connect to the endpoint URL" in text:
            endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
            return f"the S3 store of MLflow's artifacts at {endpoint}", why or text.splitlines()[0][:200]
        if isinstance(seen, (MlflowException, Refused, ConnectionError)) and why:
            return f"the MLflow server at {tracking.uri}", why
        seen = seen.__cause__ or seen.__context__
    return None, ""


def experiment_id(name: str, tracking: Tracking) -> str:
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = f"{tracking.artifact_root.rstrip('/')}/{name}" if tracking.artifact_root else None
    return mlflow.create_experiment(name, artifact_location=location)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def refused_credentials(exc: BaseException) -> bool:
    """An MLflow server refused this client's credentials (HTTP 401 or 403)."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and exc.get_http_status_code() in (401, 403)

"""Registration: log the trained model with its params, data summary and metrics to MLflow, and register it.

Every new version takes the alias `challenger` and a tag with its evaluation; whether it
becomes `champion` is the gate's decision (`components.promotion`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidops.components.errors import Unreachable, VidopsError
from vidops.components.io import read_arrays
from vidops.components.layout import HISTORY_FILE, LABELS_FILE, MODEL_FILE, RUN_FILE, SHARDS
from vidops.components.params import Params, Task
from vidops.components.tasks import spec

CHAMPION = "champion"
CHALLENGER = "challenger"  # the newest registered version
PREVIOUS = "previous-champion"  # where `vidops rollback` moves the champion back to
UNFINISHED = "vidops.unfinished"  # a version's tag from its creation until it is sealed and tagged: never loaded, gated or promoted
REGISTERED = "vidops.registered"  # a run's tag once a model of it is registered: the next registration opens a run of its own
ORIGIN = "vidops.origin"  # a version's tag: its seal (`seal_version`); only sealed, unchanged versions are loaded
EVALUATED = "vidops.metric"  # a version's tag: its champion metric from its own evaluation; only such versions are promoted


@dataclass(frozen=True)
class Tracking:
    """Where MLflow lives: a tracking URI, and the artifact root for experiments that vidops creates."""

    uri: str
    artifact_root: str | None = None


@dataclass(frozen=True)
class Registration:
    model_name: str
    version: str | None  # None: logged to its run, not registered (a DVC experiment, by registry.register_experiments)
    run_id: str
    experiment_id: str


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
        named = {name if name.startswith("val_") or name == "learning_rate" else f"train_{name}": value for name, value in metrics.items()}
        MlflowClient(self.tracking_uri).log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in named.items()], synchronous=True)

    def end(self, failed: bool = False) -> None:
        from mlflow import MlflowClient

        MlflowClient(self.tracking_uri).set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


@contextmanager
def fluent_at(tracking: Tracking) -> Iterator[None]:
    """MLflow's fluent API (start_run, register_model, models:/ URIs) at `tracking`, for the block only.
    mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI, which `flows.profiles.tracking` trusts: left behind, it
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
    tracking: Tracking, params: Params, task: Task, run_name: str, tags: dict[str, str], dataset_dir: Path, accepted: Path
) -> TrainingRun:
    """Start the task's MLflow run before training: named `run_name`, with the task's params, its lineage tags and the
    dataset as the run's input (name, DVC version as digest, the accepted clips)."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    client = MlflowClient(tracking.uri)
    tree = params.to_yaml_dict()
    logged = {group: {task: tree[group][task]} for group in ("datasets", "extract", "train")}  # this task's, not the other's
    with answering(tracking, f"opening the {task} training's run"), fluent_at(tracking):
        run = client.create_run(_experiment_id(params.registry.experiment, tracking), run_name=run_name, tags={"vidops.task": task, **tags})
        with mlflow.start_run(run_id=run.info.run_id):
            mlflow.log_params(_flatten(logged))
            version = tags.get("vidops.dataset_version", "").removesuffix(".dir")
            clips = pd.read_csv(accepted, dtype=str, keep_default_na=False)[["path", "label", "group", "split"]]
            with warnings.catch_warnings():  # MLflow 3.17 registers its local source class twice, then warns that a path fits both
                warnings.simplefilter("ignore", UserWarning)
                data = mlflow.data.from_pandas(clips, source=str(dataset_dir), name=dataset_dir.name, digest=version or None)
            mlflow.log_input(data, context="training")
        # the block above ended the run FINISHED: it runs until the training ends it (TrainingRun.end), and a training
        # killed on the way leaves it RUNNING, which the next one ends as KILLED (a killed training looked finished)
        client.update_run(run.info.run_id, status="RUNNING")
    return TrainingRun(tracking.uri, run.info.run_id)


def end_abandoned_run(model_dir: Path, tracking: Tracking) -> str | None:
    """End as KILLED the run that the model folder's last training opened in this store and did not live to end (a kill -9
    leaves it RUNNING for good); its id, or None when there is none."""
    from mlflow import MlflowClient

    found = _recorded_run(model_dir, tracking)
    if found is None:
        return None
    recorded, run = found
    if run.info.status != "RUNNING":
        return None
    MlflowClient(tracking.uri).set_terminated(recorded.run_id, "KILLED")
    return recorded.run_id


def _training_run(model_dir: Path, tracking: Tracking) -> TrainingRun | None:
    """The run the model's training reported to, when it is in this store and holds no registered model yet."""
    found = _recorded_run(model_dir, tracking)
    if found is None:
        return None
    recorded, run = found
    return None if REGISTERED in run.data.tags else recorded


def _recorded_run(model_dir: Path, tracking: Tracking) -> tuple[TrainingRun, Any] | None:
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


def register_model(
    model_dir: Path,
    features_dir: Path,
    dataset_dir: Path,
    metrics_path: Path,
    validation_report: Path,
    params: Params,
    task: Task,
    tracking: Tracking,
    tags: dict[str, str],
    register: bool = True,
    registry_key: bytes | None = None,
) -> Registration:
    """Log params, the data's validation summary, per-epoch training and evaluation metrics, the Keras model
    (`keras_model`, with its signature and a test example as input example) and the served model that takes
    videos (`model`, with a test video as input example) to the training's run; register the served one
    as the challenger unless `register` is False, sealed under `registry_key` when given."""
    import mlflow

    from vidops.components.models import load_model
    from vidops.components.validation import ACCEPTED

    metrics = json.loads(metrics_path.read_text())
    history = json.loads((model_dir / HISTORY_FILE).read_text())
    model = load_model(model_dir / MODEL_FILE)
    name = params.registry.of(task).model_name
    with answering(tracking, f"logging {name} to its run"), fluent_at(tracking):
        live = _training_run(model_dir, tracking)
        # the training's own run, which has its curves already; else (trained elsewhere, or registered once) a new one
        accepted = validation_report.with_name(ACCEPTED)
        training = live or open_training_run(tracking, params, task, f"{task}-registration", tags, dataset_dir, accepted)
        logged = _log_run(training, live is not None, model, model_dir, features_dir, dataset_dir, metrics_path, history, validation_report, params, task, tags)
    if not register:
        return Registration(name, None, logged.run_id, logged.experiment_id)
    metric = params.registry.of(task).metric
    evaluated = {**tags, EVALUATED: f"{metric}={float(metrics[metric])}"}
    with fluent_at(tracking):
        version = _register_whole(tracking, logged.model_uri, name, logged.run_id, evaluated, registry_key)
    return Registration(name, version, logged.run_id, logged.experiment_id)


@dataclass(frozen=True)
class _Logged:
    run_id: str
    experiment_id: str
    model_uri: str  # the served model logged to the run: models:/<logged model id>


def _log_run(training: TrainingRun, live: bool, model: Any, model_dir: Path, features_dir: Path, dataset_dir: Path, metrics_path: Path,
             history: dict[str, list[float]], validation_report: Path, params: Params, task: Task, tags: dict[str, str]) -> _Logged:  # fmt: skip
    """Everything of the model into its run: metrics, curves, reports, the Keras model and the served model (not registered)."""
    import mlflow

    with mlflow.start_run(run_id=training.run_id, tags=tags) as run:
        if not live:
            for epoch, values in enumerate(zip(*history.values(), strict=True)):
                training.log_epoch(epoch, len(values), dict(zip(history, values, strict=True)))
        mlflow.log_metrics({k: float(v) for k, v in json.loads(metrics_path.read_text()).items()})
        checked = json.loads(validation_report.read_text())
        mlflow.log_metrics({f"clips_{status}": checked[status] for status in ("accepted", "warned", "quarantined")})
        mlflow.log_artifact(str(validation_report), artifact_path="validation")
        mlflow.log_artifacts(str(metrics_path.parent), artifact_path="evaluation")
        mlflow.log_artifact(str(model_dir / LABELS_FILE))
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(_curves(history, Path(tmp) / "training_curves.png")))
            saved = Path(tmp) / "keras_model"
            saved.mkdir()  # mlflow.keras writes the input example before it creates the folder (mlflow#16183)
            mlflow.keras.save_model(
                model,
                str(saved),
                signature=_signature(model),
                input_example=_input_example(features_dir, task, params),
                pip_requirements=_pinned(),
            )
            mlflow.log_artifacts(str(saved), artifact_path="keras_model")
            info = _log_served_model(model_dir, features_dir, dataset_dir, params, task, Path(tmp))
    return _Logged(run.info.run_id, run.info.experiment_id, info.model_uri)


def _register_whole(tracking: Tracking, model_uri: str, name: str, run_id: str, tags: dict[str, str], registry_key: bytes | None) -> str:
    """Register the logged served model as a new version of `name`, whole or not at all: the version is made carrying
    UNFINISHED, then sealed (its files downloaded as the store holds them), tagged (lineage, its evaluation), cleared of
    UNFINISHED, and only then made the challenger. When a step fails (a server gone, Ctrl-C) the version is deleted; when
    even that cannot be done it stays UNFINISHED, which `trusted_download`, the gate and promote refuse, and the next
    registration into the same run deletes it."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking.uri)
    try:
        with answering(tracking, f"registering {name}"):
            for stale in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
                if UNFINISHED in stale.tags:  # left by an attempt of this same registration that was killed or cut off
                    client.delete_model_version(name, stale.version)
            began = f"registration from run {run_id} began {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} and has not finished"
            # not awaited: an open-source store makes a version READY as it creates it, and one request less leaves fewer
            # ways to lose the number of a version the server made
            version = str(mlflow.register_model(model_uri, name, await_registration_for=0, tags={UNFINISHED: began}).version)
    except Unreachable as exc:  # the server may have made the version and not lived to say which
        raise Unreachable(f"{exc}; a version it may have made is tagged {UNFINISHED}: never loaded, gated or promoted, and the next "
                          "registration from this run deletes it") from None  # fmt: skip
    try:
        with answering(tracking, f"registering {name} version {version}"):
            if registry_key is not None:
                seal_version(tracking, name, version, registry_key)
            for key, value in tags.items():  # the version carries its lineage too: `vidops lineage` reads it from there
                client.set_model_version_tag(name, version, key, value)
            client.delete_model_version_tag(name, version, UNFINISHED)
            client.set_registered_model_alias(name, CHALLENGER, version)  # last: only a whole version is ever the challenger
            client.set_tag(run_id, REGISTERED, version)
    except BaseException as exc:
        try:
            client.delete_model_version(name, version)
            left = f"version {version} was deleted"
        except Exception:  # the server is gone: the version keeps its UNFINISHED tag
            left = f"version {version} stays tagged {UNFINISHED}: never loaded, gated or promoted, and the next registration from this run deletes it"
        if isinstance(exc, VidopsError):
            raise type(exc)(f"{exc}; {left}") from None
        raise
    return version


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
    from botocore.exceptions import ConnectionError as NoConnection, HTTPClientError
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


def _log_served_model(model_dir: Path, features_dir: Path, dataset_dir: Path, params: Params, task: Task, tmp: Path) -> Any:
    """The pyfunc that takes videos, with the task's extraction and train params (registered by `_register_whole`).
    Logged from code (`MODEL_CODE`), not as a pickle, which MLflow warns about at every registration."""
    import mlflow
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from vidops.components.extraction import usable_rows
    from vidops.components.serving import MODEL_CODE, VIDEO, encode

    config = {"task": task, "labels": json.loads((model_dir / LABELS_FILE).read_text()),
              "extract": params.extract.of(task).model_dump(mode="json"), "train": params.train.of(task).model_dump(mode="json")}  # fmt: skip
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    example = dataset_dir / usable_rows(features_dir, "test")["path"].iloc[0]
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(MODEL_CODE),
        artifacts={"model": str(model_dir / MODEL_FILE), "config": str(tmp / "config.json")},
        code_paths=[str(_served_code(tmp))],
        signature=ModelSignature(inputs=Schema([ColSpec("string", VIDEO)])),
        input_example=pd.DataFrame({VIDEO: [encode(example)]}),
        pip_requirements=[*_pinned(), f"mlflow=={mlflow.__version__}", "av", "pandas", "pydantic"],
    )


def _served_code(tmp: Path) -> Path:
    """The code a served model carries: the `vidops` package with `components/` alone in it (MLflow puts the folder's
    parent on `sys.path` when it loads the model, where vidops may not be installed)."""
    import vidops
    import vidops.components

    package = tmp / "vidops"
    package.mkdir()
    shutil.copy2(vidops.__file__, package / "__init__.py")
    shutil.copytree(Path(vidops.components.__file__).parent, package / "components", ignore=shutil.ignore_patterns("__pycache__"))
    return package


def _signature(model: Any) -> Any:
    """Tensor specs of the model's named inputs and outputs; -1 where a size may vary (batch, the sync window)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def specs(tensors: Any) -> Any:
        named = tensors.items() if isinstance(tensors, dict) else [(t.name, t) for t in tensors]
        return Schema([TensorSpec(np.dtype(t.dtype), tuple(-1 if d is None else d for d in t.shape), n) for n, t in named])

    outputs = model.output if isinstance(model.output, dict) else {"probabilities": model.output}
    return ModelSignature(inputs=specs(model.input if isinstance(model.input, dict) else model.inputs), outputs=specs(outputs))


def _input_example(features_dir: Path, task: Task, params: Params) -> Any:
    """The first test clip as the model takes it (the task's `input_example`)."""
    from vidops.components.extraction import usable_rows

    first = read_arrays(features_dir / SHARDS / usable_rows(features_dir, "test")["shard"].iloc[0], ["frames", "audio"])
    return spec(task).input_example(first, params.train.of(task))


def _pinned() -> list[str]:
    """The served model's own requirements, pinned here: MLflow would otherwise load the model in a subprocess to infer them."""
    import keras
    import tensorflow as tf

    return [f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"]


def has_version(tracking: Tracking, name: str, version: str) -> bool:
    """Whether the registry holds version `version` of `name`."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient(tracking.uri).get_model_version(name, version)
    except MlflowException:
        return False
    return True


def alias(client: Any, name: str, alias: str) -> Any:
    """The version of `name` holding `alias`, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _curves(history: dict[str, list[float]], path: Path) -> Path:
    """Loss and accuracy per epoch, as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")  # no display, and no GUI toolkit to import
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, len(history), figsize=(4 * len(history), 3), squeeze=False)
    for axis, (name, values) in zip(axes[0], sorted(history.items()), strict=True):
        axis.plot(range(1, len(values) + 1), values)
        axis.set(title=f"train {name}", xlabel="epoch")
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)  # pyplot keeps every figure until it is closed
    return path


def _experiment_id(name: str, tracking: Tracking) -> str:
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = f"{tracking.artifact_root.rstrip('/')}/{name}" if tracking.artifact_root else None
    return mlflow.create_experiment(name, artifact_location=location)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@dataclass(frozen=True)
class Lineage:
    """Where a registered version came from, as its tags recorded it."""

    model_name: str
    version: str
    aliases: tuple[str, ...]
    run_id: str
    tags: dict[str, str]  # vidops.dataset, vidops.dataset_version, vidops.params_sha256, mlflow.source.git.commit, ...

    @property
    def dataset(self) -> str | None:
        return self.tags.get("vidops.dataset")

    @property
    def dataset_version(self) -> str | None:
        return self.tags.get("vidops.dataset_version")


def lineage(tracking: Tracking, model_uri: str) -> Lineage:
    """The lineage of `models:/NAME/VERSION` or `models:/NAME@ALIAS`: the version's tags, over its run's."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, version = registered_version(tracking, model_uri)
    try:
        run_tags = MlflowClient(tracking.uri).get_run(version.run_id).data.tags if version.run_id else {}
    except MlflowException as exc:
        if refused_credentials(exc):  # not "not in the registry": the command line names the variables to set
            raise
        raise VidopsError(f"{model_uri}: not in the registry at {tracking.uri}: {exc.message.splitlines()[0]}") from None
    return Lineage(name, str(version.version), tuple(version.aliases), version.run_id, {**run_tags, **version.tags})


def registered_version(tracking: Tracking, model_uri: str) -> tuple[str, Any]:
    """The model name and the registry's version record that `models:/NAME/VERSION` or `models:/NAME@ALIAS` names."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    found = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([\w-]+))", model_uri)
    if not found:
        raise VidopsError(f"{model_uri}: not a registered model URI such as models:/vidops-classifier@champion or models:/vidops-classifier/3")
    name, number, alias_name = found.groups()
    client = MlflowClient(tracking.uri)
    try:
        return name, client.get_model_version(name, number) if number else client.get_model_version_by_alias(name, alias_name)
    except MlflowException as exc:
        if refused_credentials(exc):  # not "not in the registry": the command line names the variables to set
            raise
        raise VidopsError(f"{model_uri}: not in the registry at {tracking.uri}: {exc.message.splitlines()[0]}") from None


def refused_credentials(exc: BaseException) -> bool:
    """An MLflow server refused this client's credentials (401 or 403): what MLflow's REST client says of it."""
    return bool(re.search(r"error code 40[13]\b", str(exc)))


# --- origin: a version vidops registered, and nothing changed since ------------------------------


def seal_version(tracking: Tracking, name: str, version: str, key: bytes) -> None:
    """Tag the version with a keyed hash (HMAC-SHA256 under the project's registry key) of its name, number and every file
    of its served model, as the store holds them: what `trusted_download` checks before anything of it is loaded."""
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        folder = download_version(tracking, name, version, Path(tmp))
        MlflowClient(tracking.uri).set_model_version_tag(name, version, ORIGIN, _seal(key, name, version, folder))


def trusted_download(tracking: Tracking, name: str, version: str, key: bytes, dst: Path) -> Path:
    """The version's served-model folder, downloaded into `dst`, once its seal proves vidops registered exactly these
    files; else an error, and nothing of it was loaded (a planted pyfunc runs its own code as it loads)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        with answering(tracking, f"reading models:/{name}/{version}"):
            tags = MlflowClient(tracking.uri).get_model_version(name, version).tags
    except MlflowException as exc:
        raise VidopsError(f"models:/{name}/{version}: not in the registry at {tracking.uri}: {exc.message.splitlines()[0]}") from None
    if UNFINISHED in tags:
        raise VidopsError(f"models:/{name}/{version}: its {tags[UNFINISHED]} (it is tagged {UNFINISHED}); refusing to load it, register the model again")
    recorded = tags.get(ORIGIN)
    with answering(tracking, f"downloading models:/{name}/{version}"):
        folder = download_version(tracking, name, version, dst)
    if recorded is None or not hmac.compare_digest(recorded, _seal(key, name, version, folder)):
        why = f"it has no {ORIGIN} tag" if recorded is None else "its files are not the ones sealed at registration"
        raise VidopsError(f"models:/{name}/{version}: not a version this project's vidops registered ({why}); refusing to load it")
    return folder


def download_version(tracking: Tracking, name: str, version: str, dst: Path) -> Path:
    """The version's served-model folder, downloaded into `dst`, unchecked (`trusted_download` checks its seal)."""
    import mlflow

    with fluent_at(tracking):  # models:/ resolves through the process's registry, not the tracking_uri argument
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst), tracking_uri=tracking.uri))


def _seal(key: bytes, name: str, version: str, folder: Path) -> str:
    files = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        files.update(path.relative_to(folder).as_posix().encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return hmac.new(key, f"{name}\0{version}\0{files.hexdigest()}".encode(), "sha256").hexdigest()

"""Registration: log the trained model with its params, data summary and metrics to its MLflow run, and register it.

Every new version is made whole or not at all (`_register_whole`): sealed (components.seal), tagged with its
lineage and its evaluation, and only then the `challenger`. Whether it becomes `champion` is the gate's decision
(components.promotion).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidops.components.errors import Unreachable, VidopsError
from vidops.components.io import read_arrays
from vidops.components.layout import ACCEPTED, HISTORY_FILE, LABELS_FILE, MODEL_FILE, SHARDS
from vidops.components.params import Params, Task
from vidops.components.seal import UNFINISHED, seal_version
from vidops.components.tasks import spec
from vidops.components.tracking import (
    REGISTERED,
    Tracking,
    TrainingRun,
    answering,
    fluent_at,
    open_training_run,
    training_run,
)

CHAMPION = "champion"
CHALLENGER = "challenger"  # the newest registered version
PREVIOUS = "previous-champion"  # where `vidops rollback` moves the champion back to
# a version's tag: its champion metric from its own evaluation; only such versions are promoted
EVALUATED = "vidops.metric"


@dataclass(frozen=True)
class Registration:
    model_name: str
    version: str | None  # None: logged to its run, not registered (a DVC experiment, by registry.register_experiments)
    run_id: str
    experiment_id: str


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

    from vidops.components.layers import load_model

    metrics = json.loads(metrics_path.read_text())
    history = json.loads((model_dir / HISTORY_FILE).read_text())
    model = load_model(model_dir / MODEL_FILE, spec(task).package)
    name = params.registry.of(task).model_name
    with answering(tracking, f"logging {name} to its run"), fluent_at(tracking):
        live = training_run(model_dir, tracking)
        # the training's own run, which has its curves already; else (trained elsewhere, or registered once) a new one
        accepted = validation_report.with_name(ACCEPTED)
        training = live or open_training_run(
            tracking, params, task, f"{task}-registration", tags, dataset_dir, accepted
        )
        logged = _log_run(
            training,
            live is not None,
            model,
            model_dir,
            features_dir,
            dataset_dir,
            metrics_path,
            history,
            validation_report,
            params,
            task,
            tags,
        )
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


def _log_run(
    training: TrainingRun,
    live: bool,
    model: Any,
    model_dir: Path,
    features_dir: Path,
    dataset_dir: Path,
    metrics_path: Path,
    history: dict[str, list[float]],
    validation_report: Path,
    params: Params,
    task: Task,
    tags: dict[str, str],
) -> _Logged:
    """Everything of the model into its run: metrics, curves, reports, the Keras model and the served model (not
    registered)."""
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


def _register_whole(
    tracking: Tracking, model_uri: str, name: str, run_id: str, tags: dict[str, str], registry_key: bytes | None
) -> str:
    """Register the logged served model as a new version of `name`, whole or not at all: the version is made carrying
    UNFINISHED, then sealed (its files downloaded as the store holds them), tagged (lineage, its evaluation), cleared
    of UNFINISHED, and only then made the challenger. When a step fails (a server gone, Ctrl-C) the version is deleted;
    when even that cannot be done it stays UNFINISHED, which `trusted_download`, the gate and promote refuse, and the
    next registration into the same run deletes it."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking.uri)
    try:
        with answering(tracking, f"registering {name}"):
            for stale in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
                if UNFINISHED in stale.tags:  # left by an attempt of this same registration that was killed or cut off
                    client.delete_model_version(name, stale.version)
            began = (
                f"registration from run {run_id} began {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
                "and has not finished"
            )
            # not awaited: an open-source store makes a version READY as it creates it, and one request less leaves
            # fewer ways to lose the number of a version the server made
            version = str(
                mlflow.register_model(model_uri, name, await_registration_for=0, tags={UNFINISHED: began}).version
            )
    except Unreachable as exc:  # the server may have made the version and not lived to say which
        raise Unreachable(
            f"{exc}; a version it may have made is tagged {UNFINISHED}: never loaded, gated or promoted, and the next "
            "registration from this run deletes it"
        ) from None
    try:
        with answering(tracking, f"registering {name} version {version}"):
            if registry_key is not None:
                seal_version(tracking, name, version, registry_key)
            for key, value in tags.items():  # the version carries its lineage too: `vidops lineage` reads it from there
                client.set_model_version_tag(name, version, key, value)
            client.delete_model_version_tag(name, version, UNFINISHED)
            # last: only a whole version is ever the challenger
            client.set_registered_model_alias(name, CHALLENGER, version)
            client.set_tag(run_id, REGISTERED, version)
    except BaseException as exc:
        try:
            client.delete_model_version(name, version)
            left = f"version {version} was deleted"
        except Exception:  # the server is gone: the version keeps its UNFINISHED tag
            left = (
                f"version {version} stays tagged {UNFINISHED}: never loaded, gated or promoted, and the next "
                "registration from this run deletes it"
            )
        if isinstance(exc, VidopsError):
            raise type(exc)(f"{exc}; {left}") from None
        raise
    return version


def _log_served_model(
    model_dir: Path, features_dir: Path, dataset_dir: Path, params: Params, task: Task, tmp: Path
) -> Any:
    """The pyfunc that takes videos, with the task's extraction and train params (registered by `_register_whole`).
    Logged from code (`MODEL_CODE`), not as a pickle, which MLflow warns about at every registration."""
    import mlflow
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from vidops.components.extraction import usable_rows
    from vidops.components.serving import MODEL_CODE, VIDEO, encode

    config = {
        "task": task,
        # where the served model finds a task that is not vidops's own: the code it carries
        "package": spec(task).package,
        "labels": json.loads((model_dir / LABELS_FILE).read_text()),
        "extract": params.extract.of(task).model_dump(mode="json"),
        "train": params.train.of(task).model_dump(mode="json"),
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    example = dataset_dir / usable_rows(features_dir, "test")["path"].iloc[0]
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(MODEL_CODE),
        artifacts={"model": str(model_dir / MODEL_FILE), "config": str(tmp / "config.json")},
        code_paths=[str(path) for path in _served_code(tmp, task)],
        signature=ModelSignature(inputs=Schema([ColSpec("string", VIDEO)])),
        input_example=pd.DataFrame({VIDEO: [encode(example)]}),
        pip_requirements=[*_pinned(), f"mlflow=={mlflow.__version__}", "av", "pandas", "pydantic"],
    )


def _served_code(tmp: Path, task: Task) -> list[Path]:
    """The code a served model carries: the `vidops` package with `components/` alone in it, and a task's own package
    when it is not in there (MLflow puts each folder's parent on `sys.path` when it loads the model, where neither
    vidops nor the task's package need be installed)."""
    import vidops
    import vidops.components

    package = tmp / "vidops"
    package.mkdir()
    unwanted = shutil.ignore_patterns("__pycache__")
    shutil.copy2(vidops.__file__, package / "__init__.py")
    shutil.copytree(Path(vidops.components.__file__).parent, package / "components", ignore=unwanted)
    code = spec(task).code
    if Path(vidops.components.__file__).parent in code.parents:
        return [package]
    own = tmp / "task"
    own.mkdir()
    target = own / code.name
    if code.is_dir():
        shutil.copytree(code, target, ignore=unwanted)
    else:
        shutil.copy2(code, target)
    return [package, target]


def _signature(model: Any) -> Any:
    """Tensor specs of the model's named inputs and outputs; -1 where a size may vary (batch, the sync window)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def specs(tensors: Any) -> Any:
        named = tensors.items() if isinstance(tensors, dict) else [(t.name, t) for t in tensors]
        return Schema(
            [TensorSpec(np.dtype(t.dtype), tuple(-1 if d is None else d for d in t.shape), n) for n, t in named]
        )

    outputs = model.output if isinstance(model.output, dict) else {"probabilities": model.output}
    return ModelSignature(
        inputs=specs(model.input if isinstance(model.input, dict) else model.inputs), outputs=specs(outputs)
    )


def _input_example(features_dir: Path, task: Task, params: Params) -> Any:
    """The first test clip as the model takes it (the task's `input_example`)."""
    from vidops.components.extraction import usable_rows

    first = read_arrays(features_dir / SHARDS / usable_rows(features_dir, "test")["shard"].iloc[0], ["frames", "audio"])
    return spec(task).input_example(first, params.train.of(task))


def _pinned() -> list[str]:
    """The served model's own requirements, pinned here: MLflow would otherwise load the model in a subprocess to infer
    them."""
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

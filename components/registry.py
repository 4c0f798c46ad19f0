"""Registration: log the trained model with its params and metrics to MLflow, register it, and crown a champion.

A new version takes the alias `champion` when there is none yet or when it beats the
current champion's metric by the margin in params.yaml; either way the decision and its
reason are recorded as tags on the version.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.layout import MODEL_FILE
from components.params import Params, Task

CHAMPION = "champion"


@dataclass(frozen=True)
class Tracking:
    """Where MLflow lives: a tracking URI, and the artifact root for experiments that vidops creates."""

    uri: str
    artifact_root: str | None = None


@dataclass(frozen=True)
class Registration:
    model_name: str
    version: str
    run_id: str
    experiment_id: str
    champion: bool
    reason: str


def register_model(
    model_dir: Path,
    features_dir: Path,
    metrics_path: Path,
    validation_report: Path,
    params: Params,
    task: Task,
    tracking: Tracking,
    tags: dict[str, str],
) -> Registration:
    """Log params, the data's validation summary, per-epoch training and evaluation metrics and the model
    (with its signature and a test example as input example); register it; decide the champion."""
    import keras
    import mlflow
    import tensorflow as tf

    from components.models import load_model

    mlflow.set_tracking_uri(tracking.uri)
    experiment_id = _experiment_id(params.registry.experiment, tracking)
    metrics = json.loads(metrics_path.read_text())
    history = json.loads((model_dir / "history.json").read_text())
    model = load_model(model_dir / MODEL_FILE)
    name = params.registry.of(task).model_name
    tree = params.to_yaml_dict()
    logged = {group: {task: tree[group][task]} for group in ("datasets", "extract", "train")}  # this task's, not the other's
    with mlflow.start_run(experiment_id=experiment_id, tags={"vidops.task": task, **tags}) as run:
        mlflow.log_params(_flatten(logged))
        for metric, values in history.items():
            for epoch, value in enumerate(values):
                mlflow.log_metric(f"train_{metric}", value, step=epoch)
        mlflow.log_figure(_curves(history), "training_curves.png")
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        checked = json.loads(validation_report.read_text())
        mlflow.log_metrics({f"clips_{status}": checked[status] for status in ("accepted", "warned", "quarantined")})
        mlflow.log_artifact(str(validation_report), artifact_path="validation")
        mlflow.log_artifacts(str(metrics_path.parent), artifact_path="evaluation")
        mlflow.log_artifact(str(model_dir / "labels.json"))
        example = _input_example(features_dir, task, params)
        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / "model"
            saved.mkdir()  # mlflow.keras writes the input example before it creates the folder (mlflow#16183)
            mlflow.keras.save_model(
                model,
                str(saved),
                signature=_signature(model),
                input_example=example,
                # pinned here: MLflow would otherwise load the model in a subprocess to infer them
                pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
            )
            mlflow.log_artifacts(str(saved), artifact_path="model")
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", name).version
    champion, reason = _crown(name, str(version), metrics, params, task)
    return Registration(name, str(version), run.info.run_id, experiment_id, champion, reason)


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
    """The first test clip as the model takes it: its frames, or one in-sync window of frames with audio."""
    from components import inputs

    split = inputs.open_split(features_dir, "test", ("frames",) if task == "classification" else ("frames", "audio"))
    first = inputs.Split(split.paths[:1], split.labels[:1], split.names, split.shapes)
    if task == "classification":
        return inputs.in_memory(first, "frames")
    train = params.train.sync
    examples, offsets = inputs.sync_examples(inputs.in_memory(first, "frames")[0], inputs.in_memory(first, "audio")[0], train.window, train.max_offset)
    in_sync = int(np.argmax(offsets == 0))
    return {field: array[in_sync : in_sync + 1] for field, array in examples.items()}


def _crown(name: str, version: str, metrics: dict[str, float], params: Params, task: Task) -> tuple[bool, str]:
    """Move the champion alias to `version` if it beats the current champion; record why on the version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    key, margin = params.registry.of(task).metric, params.registry.min_improvement
    score = float(metrics[key])
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        current = None
    if current is None:
        champion, reason = True, f"first model: {key} {score:.4f}"
    else:
        best = client.get_run(current.run_id).data.metrics.get(key, float("-inf"))
        champion = score > best + margin
        verdict = "beats" if champion else "does not beat"
        reason = f"{key} {score:.4f} {verdict} champion v{current.version} ({best:.4f}) by more than {margin}"
    if champion:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "vidops.decision", CHAMPION if champion else "not promoted")
    client.set_model_version_tag(name, version, "vidops.reason", reason)
    return champion, reason


def _curves(history: dict[str, list[float]]) -> Any:
    """Loss and accuracy per epoch, as a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")  # no display, and no GUI toolkit to import
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, len(history), figsize=(4 * len(history), 3), squeeze=False)
    for axis, (name, values) in zip(axes[0], sorted(history.items()), strict=True):
        axis.plot(range(1, len(values) + 1), values)
        axis.set(title=f"train {name}", xlabel="epoch")
    figure.tight_layout()
    return figure


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

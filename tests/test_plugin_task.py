"""A task vidops does not ship, defined in this file alone (its spec, its params and a two-layer model), goes through
validate, extract, train, evaluate, register and the gate: the specs are the one place that knows a task."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from pydantic import Field

from vidops.components import tasks
from vidops.components.errors import VidopsError
from vidops.components.layout import HISTORY_FILE, LABELS_FILE, MODEL_FILE, Layout
from vidops.components.params import ExtractParams, FitParams, GenerateParams, ModelRegistryParams, load_params
from vidops.components.registry import CHAMPION, EVALUATED
from vidops.components.tasks import TaskDefaults, TaskSpec

NAME = "colour"  # which motion a clip shows, told by its mean colour alone: a weak model, which is all this needs


class ColourParams(FitParams):
    units: int = Field(8, ge=1)
    epochs: int = Field(2, ge=1)


def build(frames: int, size: int, classes: int, params: ColourParams) -> Any:
    """Two layers over the clip's mean colour."""
    import keras

    inputs = keras.Input((frames, size, size, 3), dtype="uint8", name="frames")
    x = keras.layers.GlobalAveragePooling3D()(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Dense(params.units, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax", name="probabilities")(x))


def train(features_dir: Path, model_dir: Path, params: ColourParams, on_epoch: Any = None) -> Any:
    import keras

    from vidops.components import inputs
    from vidops.components.io import write_json
    from vidops.components.tasks import TrainedModel

    split = inputs.open_split(features_dir, "train", ("frames",))
    frames = inputs.in_memory(split, "frames")
    model = build(*frames.shape[1:3], len(split.names), params)
    model.compile(optimizer=keras.optimizers.Adam(params.learning_rate), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(frames, split.labels, epochs=params.epochs, batch_size=params.batch_size, verbose=0).history
    for epoch in range(params.epochs):
        if on_epoch:
            on_epoch(epoch, params.epochs, {name: float(values[epoch]) for name, values in history.items()})
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save(model_dir / MODEL_FILE)
    write_json(model_dir / LABELS_FILE, list(split.names))
    write_json(model_dir / HISTORY_FILE, history)
    return TrainedModel(model_dir / MODEL_FILE, split.names, params.epochs, 0, history)


def evaluate(model_dir: Path, features_dir: Path, reports_dir: Path, params: ColourParams) -> Any:
    from vidops.components.evaluation import evaluate_classifier

    return evaluate_classifier(model_dir, features_dir, reports_dir)


def predict(model: Any, clip: Any, labels: list[str], params: ColourParams) -> dict[str, Any]:
    probabilities = model.predict(clip.frames[None], verbose=0)[0]
    return {"label": labels[int(np.argmax(probabilities))], "probability": float(np.max(probabilities))}


SPEC = TaskSpec(
    NAME,
    TaskDefaults(
        dataset="demo-colour",
        extract=ExtractParams(frames=4, size=16, audio="none"),
        train=ColourParams(),
        registry=ModelRegistryParams(model_name="vidops-colour", metric="accuracy", floor=0.0),
        generate=GenerateParams(clips_per_class=3, duration_s=1.0, size=48),
    ),
    train=train,
    evaluate=evaluate,
    headline=lambda metrics: f"accuracy {metrics['accuracy']:.3f}",
    input_example=lambda clip, params: clip["frames"][None],
    predict=predict,
    demo="classification",  # the demo generator's moving shapes
)


@pytest.fixture
def colour_task():
    tasks.register(SPEC)
    yield SPEC
    tasks.unregister(NAME)


def test_a_task_defined_only_here_is_trained_evaluated_registered_and_gated(colour_task, tmp_path, monkeypatch):
    from vidops.components.generate import generate_dataset
    from vidops.flows import stages
    from vidops.flows.profiles import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    layout = Layout(tmp_path)
    params = load_params(None, [f"tasks=[{NAME}]", f"train.{NAME}.units=4"])  # params.yaml groups of a task the file never knew
    assert params.train.of(NAME) == ColourParams(units=4) and params.registry.of(NAME).model_name == "vidops-colour"
    generate_dataset(layout.raw(params.datasets.of(NAME)), colour_task.demo, params.generate.of(NAME))

    summary = stages.validate_dataset(layout, params, NAME)
    assert summary.accepted == 21
    stages.extract_features(layout, params, NAME)
    trained = stages.train_model(layout, params, NAME)
    assert trained.path == layout.model(NAME) and trained.epochs == 2
    scores = stages.evaluate_model(layout, params, NAME)
    assert 0 <= scores.metrics["accuracy"] <= 1
    registered = stages.register_model(layout, params, NAME)
    decision = stages.promote_model(layout, params, NAME)

    assert (registered.model_name, registered.version) == ("vidops-colour", "1")
    assert decision.champion and decision.score == pytest.approx(scores.metrics["accuracy"])
    client = MlflowClient(tracking(layout).uri)
    version = client.get_model_version_by_alias("vidops-colour", CHAMPION)
    assert version.tags[EVALUATED] == f"accuracy={scores.metrics['accuracy']}" and version.tags["vidops.task"] == NAME
    assert json.loads(layout.promotion(NAME).joinpath("promotion.json").read_text())["decision"] == CHAMPION
    assert client.get_run(registered.run_id).data.params[f"train.{NAME}.units"] == "4"
    assert colour_task.source == Path(__file__)  # this file keys the task's cached stages, as a built-in spec's module does

    monkeypatch.setenv("VIDOPS_SERVE_PATHS", "1")
    mlflow.set_tracking_uri(tracking(layout).uri)
    served = mlflow.pyfunc.load_model(f"models:/vidops-colour@{CHAMPION}")
    clip = next(layout.raw(params.datasets.of(NAME)).glob("rotate/*.mp4"))
    answer = served.predict(pd.DataFrame({"video": [str(clip)]})).iloc[0]
    assert answer["label"] in trained.labels and 0 < answer["probability"] <= 1


def test_a_task_without_a_spec_is_an_error_that_lists_the_known_tasks():
    with pytest.raises(VidopsError, match=r"tasks: no task 'colour'; known tasks: captioning, classification, sync"):
        load_params(None, [f"tasks=[{NAME}]"])
    with pytest.raises(VidopsError, match=r"no task 'colour'; known tasks: captioning, classification, sync"):
        tasks.spec(NAME)

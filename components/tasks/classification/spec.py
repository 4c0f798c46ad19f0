"""The video classifier: a clip's frames in, its class out (the label folders or the manifest's labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vidops.components import encoders
from vidops.components.params import ExtractParams, GenerateParams, ModelRegistryParams, Task
from vidops.components.tasks import TaskDefaults, TaskSpec, TrainedModel
from vidops.components.tasks.classification.generate import generate
from vidops.components.tasks.classification.params import ClassifierParams


def train(features_dir: Path, model_dir: Path, params: ClassifierParams, on_epoch: Any = None) -> TrainedModel:
    # TensorFlow: in the training process only
    from vidops.components.tasks.classification.train import train_classifier

    return train_classifier(features_dir, model_dir, params, on_epoch)


def evaluate(model_dir: Path, features_dir: Path, reports_dir: Path, params: ClassifierParams) -> Any:
    from vidops.components.tasks.classification.evaluation import evaluate_classifier

    return evaluate_classifier(model_dir, features_dir, reports_dir)


def headline(metrics: dict[str, Any]) -> str:
    return (
        f"accuracy {metrics['accuracy']:.3f} on {metrics['test_clips']} held-out clips (chance {metrics['chance']:.3f})"
    )


def input_example(clip: dict[str, np.ndarray], params: ClassifierParams) -> np.ndarray:
    return clip["frames"][None]


def predict(model: Any, clip: Any, labels: list[str], params: ClassifierParams) -> dict[str, Any]:
    """The most likely class with its probability, and every class's probability as `p_<label>`."""
    probabilities = model.predict(clip.frames[None], verbose=0)[0]
    best = int(np.argmax(probabilities))
    every = {f"p_{label}": float(p) for label, p in zip(labels, probabilities, strict=True)}
    return {"label": labels[best], "probability": float(probabilities[best]), **every}


def check(name: Task, extract: ExtractParams, train: ClassifierParams) -> None:
    """The frame encoder against the frames, and the temporal layer that needs the small one."""
    encoders.check_params(name, train, extract.size)
    if train.temporal == "2plus1d" and train.encoder != encoders.SMALL:
        raise ValueError(
            f"train.{name}.temporal: 2plus1d builds its own (2+1)D blocks in place of a frame encoder; "
            f"use conv or lstm with {train.encoder}"
        )


SPEC = TaskSpec(
    name="classification",
    defaults=TaskDefaults(
        dataset="demo",
        extract=ExtractParams(),
        train=ClassifierParams(),
        registry=ModelRegistryParams(model_name="vidops-classifier", metric="accuracy", floor=0.5),
        generate=GenerateParams(),
    ),
    train=train,
    evaluate=evaluate,
    metrics=("accuracy", "macro_f1"),
    headline=headline,
    input_example=input_example,
    predict=predict,
    check=check,
    preflight=encoders.check_weights_present,
    generate=generate,  # shapes whose motion is the class
    order=1,
    curves=("loss", "accuracy"),
)

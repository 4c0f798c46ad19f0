"""The video classifier: a clip's frames in, its class out (the label folders or the manifest's labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from components.params import ClassifierParams, ExtractParams, GenerateParams, ModelRegistryParams
from components.tasks import TaskDefaults, TaskSpec, register

NAME = "classification"


def train(features_dir: Path, model_dir: Path, params: ClassifierParams, on_epoch: Any = None) -> Any:
    from components.training import train_classifier

    return train_classifier(features_dir, model_dir, params, on_epoch)


def evaluate(model_dir: Path, features_dir: Path, reports_dir: Path, params: ClassifierParams) -> Any:
    from components.evaluation import evaluate_classifier

    return evaluate_classifier(model_dir, features_dir, reports_dir)


def headline(metrics: dict[str, Any]) -> str:
    return f"accuracy {metrics['accuracy']:.3f} on {metrics['test_clips']} held-out clips (chance {metrics['chance']:.3f})"


def input_example(clip: dict[str, np.ndarray], params: ClassifierParams) -> np.ndarray:
    return clip["frames"][None]


def predict(model: Any, clip: Any, labels: list[str], params: ClassifierParams) -> dict[str, Any]:
    """The most likely class with its probability, and every class's probability as `p_<label>`."""
    probabilities = model.predict(clip.frames[None], verbose=0)[0]
    best = int(np.argmax(probabilities))
    return {"label": labels[best], "probability": float(probabilities[best]), **{f"p_{label}": float(p) for label, p in zip(labels, probabilities, strict=True)}}


SPEC = register(
    TaskSpec(
        NAME,
        TaskDefaults(
            dataset="demo",
            extract=ExtractParams(),
            train=ClassifierParams(),
            registry=ModelRegistryParams(model_name="vidops-classifier", metric="accuracy", floor=0.5),
            generate=GenerateParams(),
        ),
        train=train,
        evaluate=evaluate,
        headline=headline,
        input_example=input_example,
        predict=predict,
        demo=NAME,  # shapes whose motion is the class
    )
)

"""The task's spec: its params, its demo data (the classifier's moving shapes), how it trains, scores and serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from colour_task.params import ColourParams
from vidops.components.params import ExtractParams, GenerateParams, ModelRegistryParams
from vidops.components.tasks import TaskDefaults, TaskSpec, TrainedModel
from vidops.components.tasks.classification.generate import generate


def train(features_dir: Path, model_dir: Path, params: ColourParams, on_epoch: Any = None) -> TrainedModel:
    from colour_task.train import train_colour

    return train_colour(features_dir, model_dir, params, on_epoch)


def evaluate(model_dir: Path, features_dir: Path, reports_dir: Path, params: ColourParams) -> Any:
    from colour_task.evaluation import evaluate_colour

    return evaluate_colour(model_dir, features_dir, reports_dir)


def predict(model: Any, clip: Any, labels: list[str], params: ColourParams) -> dict[str, Any]:
    probabilities = model.predict(clip.frames[None], verbose=0)[0]
    return {"label": labels[int(np.argmax(probabilities))], "probability": float(np.max(probabilities))}


SPEC = TaskSpec(
    name="colour",
    defaults=TaskDefaults(
        dataset="demo-colour",
        extract=ExtractParams(frames=4, size=16, audio="none"),
        train=ColourParams(),
        registry=ModelRegistryParams(model_name="vidops-colour", metric="accuracy", floor=0.0),
        generate=GenerateParams(clips_per_class=3, duration_s=1.0, size=48),
    ),
    train=train,
    evaluate=evaluate,
    metrics=("accuracy",),
    headline=lambda metrics: f"accuracy {metrics['accuracy']:.3f}",
    input_example=lambda clip, params: clip["frames"][None],
    predict=predict,
    generate=generate,  # the classifier's demo data: shapes whose motion is the class
)

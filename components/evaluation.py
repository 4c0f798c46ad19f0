"""Evaluation: accuracy and a confusion matrix of a trained classifier on the held-out split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.errors import VidopsError
from components.extraction import load_split
from components.io import write_csv, write_json
from components.layout import MODEL_FILE

METRICS = "metrics.json"


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    metrics_path: Path
    confusion_path: Path


def evaluate_classifier(model_dir: Path, features_dir: Path, reports_dir: Path) -> Evaluation:
    """Predict the test split; write `metrics.json` and `confusion.csv` (actual, predicted: dvc plots' format)."""
    import keras

    if not (model_dir / MODEL_FILE).is_file():
        raise VidopsError(f"{model_dir / MODEL_FILE}: no trained model; run the train stage first")
    frames, truth = load_split(features_dir, "test")
    if len(truth) == 0:
        raise VidopsError(f"{features_dir}: the test split is empty; nothing to evaluate on")
    labels = json.loads((model_dir / "labels.json").read_text())
    model = keras.models.load_model(model_dir / MODEL_FILE)
    predicted = np.argmax(model.predict(frames, verbose=0), axis=1)
    accuracy = float(np.mean(predicted == truth))
    per_class = {f"accuracy_{label}": float(np.mean(predicted[truth == i] == i)) for i, label in enumerate(labels) if np.any(truth == i)}
    metrics = {"accuracy": accuracy, "chance": 1 / len(labels), "test_clips": int(len(truth)), **per_class}
    write_json(reports_dir / METRICS, metrics)
    confusion = pd.DataFrame({"actual": [labels[i] for i in truth], "predicted": [labels[i] for i in predicted]})
    write_csv(reports_dir / "confusion.csv", confusion)
    return Evaluation(metrics, reports_dir / METRICS, reports_dir / "confusion.csv")

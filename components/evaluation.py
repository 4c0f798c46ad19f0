"""Evaluation on the held-out split: the classifier's accuracy and confusion, the sync model's offset errors.

Each writes `metrics.json` and `confusion.csv` (actual, predicted: the format of `dvc plots`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components import inputs
from components.errors import VidopsError
from components.io import write_csv, write_json
from components.layout import MODEL_FILE

METRICS = "metrics.json"
CONFUSION = "confusion.csv"


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    metrics_path: Path
    confusion_path: Path


def evaluate_classifier(model_dir: Path, features_dir: Path, reports_dir: Path) -> Evaluation:
    """Accuracy (overall and per class) of the classifier on the test split."""
    model, labels = _load(model_dir)
    split = _test_split(features_dir, ("frames",))
    predicted = np.argmax(model.predict(inputs.in_memory(split, "frames"), verbose=0), axis=1)
    truth = split.labels
    per_class = {f"accuracy_{label}": float(np.mean(predicted[truth == i] == i)) for i, label in enumerate(labels) if np.any(truth == i)}
    metrics = {"accuracy": float(np.mean(predicted == truth)), "chance": 1 / len(labels), "test_clips": len(truth), **per_class}
    return _write(reports_dir, metrics, [labels[i] for i in truth], [labels[i] for i in predicted])


def evaluate_sync(model_dir: Path, features_dir: Path, reports_dir: Path, window: int) -> Evaluation:
    """Offset accuracy, exact and within +-1 frame (the LRS2 protocol), and mean absolute error in frames, for windows of `window` frames.

    Every test clip gives every offset k in [-K, K] at a few evenly spaced windows, so each
    offset counts the same.
    """
    model, labels = _load(model_dir)
    max_offset = (len(labels) - 1) // 2
    split = _test_split(features_dir, ("frames", "audio"))
    frames, audio = inputs.in_memory(split, "frames"), inputs.in_memory(split, "audio")
    truth, predicted, in_sync = [], [], []
    for clip_frames, clip_audio in zip(frames, audio, strict=True):
        examples, offsets = inputs.sync_examples(clip_frames, clip_audio, window, max_offset)
        out = model.predict(examples, batch_size=128, verbose=0)
        truth.append(offsets)
        predicted.append(np.argmax(out["offset"], axis=1) - max_offset)
        in_sync.append(out["in_sync"][:, 0] > 0.5)
    t, p, s = np.concatenate(truth), np.concatenate(predicted), np.concatenate(in_sync)
    error = np.abs(p - t)
    metrics = {
        "accuracy": float(np.mean(error == 0)),
        "accuracy_within_1": float(np.mean(error <= 1)),
        "mae_frames": float(np.mean(error)),
        "in_sync_accuracy": float((np.mean(s[t == 0]) + np.mean(~s[t != 0])) / 2),  # balanced: k = 0 is rare
        "chance": 1 / len(labels),
        "chance_within_1": 3 / len(labels),
        "test_clips": len(frames),
        "examples": len(t),
    }
    return _write(reports_dir, metrics, [int(k) for k in t], [int(k) for k in p])


def _load(model_dir: Path) -> tuple[Any, list[str]]:
    from components.models import load_model

    if not (model_dir / MODEL_FILE).is_file():
        raise VidopsError(f"{model_dir / MODEL_FILE}: no trained model; run the train stage first")
    return load_model(model_dir / MODEL_FILE), json.loads((model_dir / "labels.json").read_text())


def _test_split(features_dir: Path, fields: tuple[str, ...]) -> inputs.Split:
    split = inputs.open_split(features_dir, "test", fields)
    if not split.paths:
        raise VidopsError(f"{features_dir}: the test split is empty; nothing to evaluate on")
    return split


def _write(reports_dir: Path, metrics: dict[str, Any], actual: list[Any], predicted: list[Any]) -> Evaluation:
    write_json(reports_dir / METRICS, metrics)
    write_csv(reports_dir / CONFUSION, pd.DataFrame({"actual": actual, "predicted": predicted}))
    return Evaluation(metrics, reports_dir / METRICS, reports_dir / CONFUSION)

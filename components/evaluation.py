"""Evaluation on the held-out split: the classifier's accuracy, macro F1, per-class scores and confusion; the sync
model's offset errors, also against context length.

Each writes `metrics.json`, `confusion.csv` (actual, predicted: the format of `dvc plots`) and `confusion.png`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidops.components import inputs
from vidops.components.errors import VidopsError
from vidops.components.io import atomic_path, write_csv, write_json
from vidops.components.layout import LABELS_FILE, MODEL_FILE
from vidops.components.params import SyncParams

METRICS = "metrics.json"
CONFUSION = "confusion.csv"
CONTEXT_LENGTHS = (5, 7, 9, 11, 13, 15)  # sync: window lengths, in frames, that accuracy is reported against


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
    per_class = per_class_scores(truth, predicted, labels)
    f1 = [per_class[f"f1_{label}"] for i, label in enumerate(labels) if np.any(truth == i)]
    metrics = {"accuracy": float(np.mean(predicted == truth)), "macro_f1": float(np.mean(f1)), "chance": 1 / len(labels), "test_clips": len(truth), **per_class}
    return _write(reports_dir, metrics, [labels[i] for i in truth], [labels[i] for i in predicted], labels)


def per_class_scores(truth: np.ndarray, predicted: np.ndarray, labels: list[str]) -> dict[str, float]:
    """Precision, recall and F1 of each class (0 where a class is never predicted or never true)."""
    scores = {}
    for i, label in enumerate(labels):
        hits = float(np.sum((predicted == i) & (truth == i)))
        precision = hits / max(1, int(np.sum(predicted == i)))
        recall = hits / max(1, int(np.sum(truth == i)))
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores |= {f"precision_{label}": precision, f"recall_{label}": recall, f"f1_{label}": f1}
    return scores


def evaluate_sync(model_dir: Path, features_dir: Path, reports_dir: Path, params: SyncParams) -> Evaluation:
    """Offset accuracy, exact and within +-1 frame (the LRS2 protocol), and mean absolute error in frames, for windows of
    `params.window` frames; and accuracy within +-1 against context length, 5 to `params.window` frames (as the LRS2
    protocol reports it), in `context.csv`.

    Every test clip gives every offset k in [-K, K] at a few evenly spaced windows, so each
    offset counts the same.
    """
    model, _ = _load(model_dir)
    split = _test_split(features_dir, ("frames", "audio"))
    frames, audio = inputs.in_memory(split, "frames"), inputs.in_memory(split, "audio")
    t, p, s = _offsets(model, frames, audio, params)
    lengths = [n for n in CONTEXT_LENGTHS if n < params.window]
    shorter = {n: _offsets(model, frames, audio, params.model_copy(update={"window": n}))[:2] for n in lengths}
    by_length = {n: float(np.mean(np.abs(predicted - truth) <= 1)) for n, (truth, predicted) in shorter.items()}
    by_length[params.window] = float(np.mean(np.abs(p - t) <= 1))
    write_csv(reports_dir / "context.csv", pd.DataFrame({"frames": list(by_length), "accuracy_within_1": list(by_length.values())}))
    error = np.abs(p - t)
    metrics = {
        "accuracy": float(np.mean(error == 0)),
        "accuracy_within_1": float(np.mean(error <= 1)),
        "mae_frames": float(np.mean(error)),
        "in_sync_accuracy": float((np.mean(s[t == 0]) + np.mean(~s[t != 0])) / 2),  # balanced: k = 0 is rare
        "chance": 1 / len(params.offsets),
        "chance_within_1": 3 / len(params.offsets),
        "test_clips": len(frames),
        "examples": len(t),
        **{f"accuracy_within_1_at_{n}": value for n, value in by_length.items()},
    }
    return _write(reports_dir, metrics, [int(k) for k in t], [int(k) for k in p], [str(k) for k in params.offsets])


def _offsets(model: Any, frames: np.ndarray, audio: np.ndarray, params: SyncParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True offsets, predicted offsets and in-sync answers over every clip's evaluation windows of `params.window` frames."""
    truth, predicted, in_sync = [], [], []
    for clip_frames, clip_audio in zip(frames, audio, strict=True):
        examples, offsets = inputs.sync_examples(clip_frames, clip_audio, params)
        out = model.predict(examples, batch_size=128, verbose=0)
        truth.append(offsets)
        predicted.append(np.asarray(params.offsets)[np.argmax(out["offset"], axis=1)])
        in_sync.append(out["in_sync"][:, 0] > 0.5)
    return np.concatenate(truth), np.concatenate(predicted), np.concatenate(in_sync)


def _load(model_dir: Path) -> tuple[Any, list[str]]:
    from vidops.components.models import load_model

    if not (model_dir / MODEL_FILE).is_file():
        raise VidopsError(f"{model_dir / MODEL_FILE}: no trained model; run the train stage first")
    return load_model(model_dir / MODEL_FILE), json.loads((model_dir / LABELS_FILE).read_text())


def _test_split(features_dir: Path, fields: tuple[str, ...]) -> inputs.Split:
    split = inputs.open_split(features_dir, "test", fields)
    if not split.paths:
        raise VidopsError(f"{features_dir}: the test split is empty; nothing to evaluate on")
    return split


def _write(reports_dir: Path, metrics: dict[str, Any], actual: list[Any], predicted: list[Any], classes: list[str]) -> Evaluation:
    """metrics.json; the confusion pairs as CSV (for `dvc plots`) and as a matrix image (for MLflow)."""
    write_json(reports_dir / METRICS, metrics)
    pairs = pd.DataFrame({"actual": actual, "predicted": predicted})
    write_csv(reports_dir / CONFUSION, pairs)
    _confusion_image(pairs.astype(str), classes, reports_dir / "confusion.png")
    return Evaluation(metrics, reports_dir / METRICS, reports_dir / CONFUSION)


def _confusion_image(pairs: pd.DataFrame, classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display, and no GUI toolkit to import
    from matplotlib import pyplot as plt

    counts = pd.crosstab(pairs["actual"], pairs["predicted"]).reindex(index=classes, columns=classes, fill_value=0)
    side = 2 + 0.3 * len(classes)
    figure, axis = plt.subplots(figsize=(side + 1, side))
    image = axis.imshow(counts.to_numpy(), cmap="Blues")
    ticks = range(len(classes))
    axis.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="actual", title="confusion on the held-out split")
    axis.set_xticklabels(classes, rotation=90, fontsize=7)
    axis.set_yticklabels(classes, fontsize=7)
    figure.colorbar(image)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)

"""The classifier on the held-out split: accuracy, macro F1, per-class precision, recall and F1, and the confusion."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vidops.components import inputs
from vidops.components.evaluation import CLIPS_A_READ, Evaluation, held_out, load_trained, write_report


def evaluate_classifier(model_dir: Path, features_dir: Path, reports_dir: Path) -> Evaluation:
    """Accuracy (overall and per class) of the classifier on the test split."""
    model, labels = load_trained(model_dir, __package__)
    split = held_out(features_dir, ("frames",))
    chunks = inputs.in_chunks(split, "frames", CLIPS_A_READ)
    predicted = np.concatenate([np.argmax(model.predict(frames, verbose=0), axis=1) for frames in chunks])
    truth = split.labels
    per_class = per_class_scores(truth, predicted, labels)
    f1 = [per_class[f"f1_{label}"] for i, label in enumerate(labels) if np.any(truth == i)]
    metrics = {
        "accuracy": float(np.mean(predicted == truth)),
        "macro_f1": float(np.mean(f1)),
        "chance": 1 / len(labels),
        "test_clips": len(truth),
        **per_class,
    }
    return write_report(reports_dir, metrics, [labels[i] for i in truth], [labels[i] for i in predicted], labels)


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

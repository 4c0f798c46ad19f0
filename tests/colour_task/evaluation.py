"""Accuracy on the held-out clips, through vidops's shared evaluation helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vidops.components import inputs
from vidops.components.evaluation import Evaluation, held_out, load_trained, write_report


def evaluate_colour(model_dir: Path, features_dir: Path, reports_dir: Path) -> Evaluation:
    model, labels = load_trained(model_dir, __package__)
    split = held_out(features_dir, ("frames",))
    predicted = np.argmax(model.predict(inputs.in_memory(split, "frames"), verbose=0), axis=1)
    metrics = {"accuracy": float(np.mean(predicted == split.labels)), "test_clips": len(split.paths)}
    return write_report(reports_dir, metrics, [labels[i] for i in split.labels], [labels[i] for i in predicted], labels)

"""What every task's evaluation shares: the trained model and its labels, the held-out split, and the report.

A task's own evaluate (its evaluation.py) scores the model on the test split and writes, through `write_report`,
`metrics.json`, `confusion.csv` (actual, predicted: the format of `dvc plots`) and `confusion.png`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vidops.components import inputs
from vidops.components.errors import VidopsError
from vidops.components.io import atomic_path, write_csv, write_json
from vidops.components.layout import CONFUSION, LABELS_FILE, METRICS, MODEL_FILE

CLIPS_A_READ = 128  # test clips held at once (UCF101-sized, 16 frames of 112 px: 77 MB), whatever the split's size


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    metrics_path: Path
    confusion_path: Path
    # a markdown table of test clips and what the model said of them, for the run's report
    samples_path: Path | None = None


def load_trained(model_dir: Path, package: str | None = None) -> tuple[Any, list[str]]:
    """The trained Keras model under `model_dir` (its task's `package` registers the task's own layers) and its
    labels."""
    from vidops.components.layers import load_model

    if not (model_dir / MODEL_FILE).is_file():
        raise VidopsError(f"{model_dir / MODEL_FILE}: no trained model; run the train stage first")
    return load_model(model_dir / MODEL_FILE, package), json.loads((model_dir / LABELS_FILE).read_text())


def held_out(features_dir: Path, fields: tuple[str, ...]) -> inputs.Split:
    """The checked test split; an error when it is empty."""
    split = inputs.open_split(features_dir, "test", fields)
    if not split.paths:
        raise VidopsError(f"{features_dir}: the test split is empty; nothing to evaluate on")
    return split


def write_report(
    reports_dir: Path, metrics: dict[str, Any], actual: list[Any], predicted: list[Any], classes: list[str]
) -> Evaluation:
    """metrics.json; the confusion pairs as CSV (for `dvc plots`) and as a matrix image (for MLflow)."""
    write_json(reports_dir / METRICS, metrics)
    pairs = pd.DataFrame({"actual": actual, "predicted": predicted})
    write_csv(reports_dir / CONFUSION, pairs)
    if classes:  # a captioner of captions in other words than the demo's has no attributes to confuse
        _confusion_image(pairs.astype(str), classes, reports_dir / "confusion.png")
    else:
        (reports_dir / "confusion.png").unlink(missing_ok=True)
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

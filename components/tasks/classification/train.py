"""The classifier fitted on the train split's clips and labels, through the shared loop (components.training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vidops.components import encoders, inputs, training
from vidops.components.errors import VidopsError
from vidops.components.tasks import TrainedModel
from vidops.components.tasks.classification.inputs import classifier_dataset, classifier_validation
from vidops.components.tasks.classification.model import build_classifier
from vidops.components.tasks.classification.params import ClassifierParams


def train_classifier(
    features_dir: Path, model_dir: Path, params: ClassifierParams, on_epoch: training.EpochHook | None = None
) -> TrainedModel:
    """Fit the classifier; write `model.keras`, `labels.json` (the classes) and `history.json` under `model_dir`,
    resuming from its checkpoint of the same params and data."""
    encoders.check_weights("classification", params)  # a weights file that does not fit: named before any epoch
    strategy = training.prepare_device(params)  # first: GPU settings cannot change once TensorFlow has made a tensor
    split, held = training.train_split(features_dir, ("frames",), params.validation_fraction)
    missing = [name for i, name in enumerate(split.names) if not np.any(split.labels == i)]
    if missing:
        raise VidopsError(f"{features_dir}: no training clips for class(es) {', '.join(missing)}")
    feed = inputs.split_feed(split, held, params)
    data = classifier_dataset(split, params.batch_size, params.augment, params.seed, feed)
    validation = classifier_validation(held, params.batch_size, feed) if held else None
    frames, size = split.shapes["frames"][0], split.shapes["frames"][1]
    recipe = training.Recipe(
        build=lambda: build_classifier(frames, size, len(split.names), params),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return training.fit(strategy, recipe, data, validation, split.names, features_dir, model_dir, params, on_epoch)

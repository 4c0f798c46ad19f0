"""Training: a small Keras video classifier, a per-frame CNN followed by a temporal layer that sees frame order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from components.extraction import INDEX, load_split
from components.io import atomic_path, write_json
from components.layout import MODEL_FILE
from components.params import ClassifierParams



@dataclass(frozen=True)
class TrainedModel:
    path: Path
    labels: tuple[str, ...]
    epochs: int
    history: dict[str, list[float]]


def build_classifier(frames: int, size: int, n_classes: int, params: ClassifierParams) -> keras.Model:
    """Frames uint8 [N, S, S, 3] in, class probabilities out."""
    inputs = keras.Input((frames, size, size, 3), dtype="uint8", name="frames")
    x = layers.Rescaling(1 / 255)(inputs)
    for filters in params.filters:
        x = layers.TimeDistributed(layers.Conv2D(filters, 3, padding="same", use_bias=False))(x)
        x = layers.TimeDistributed(layers.BatchNormalization())(x)
        x = layers.Activation("relu")(x)
        x = layers.TimeDistributed(layers.MaxPooling2D())(x)
    # The temporal layer keeps the spatial grid: a shape moving left and one moving right
    # give the same frames in reverse order, and only a filter over (time, y, x) tells them apart.
    if params.temporal == "conv":
        x = layers.Conv3D(64, 3, padding="same", activation="relu")(x)
        x = layers.Conv3D(64, 3, padding="same", activation="relu")(x)
        x = layers.GlobalMaxPooling3D()(x)
    else:
        x = layers.ConvLSTM2D(48, 3, padding="same")(x)
        x = layers.GlobalMaxPooling2D()(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"classifier_{params.temporal}")


def train_classifier(features_dir: Path, model_dir: Path, params: ClassifierParams) -> TrainedModel:
    """Fit the classifier on the train split; write `model.keras`, `labels.json` and `history.json` under `model_dir`."""
    frames, labels = load_split(features_dir, "train")
    index = json.loads((features_dir / INDEX).read_text())
    keras.utils.set_random_seed(params.seed)
    model = build_classifier(frames.shape[1], frames.shape[2], len(index["labels"]), params)
    model.compile(
        optimizer=keras.optimizers.Adam(params.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    fit = model.fit(frames, labels, batch_size=params.batch_size, epochs=params.epochs, shuffle=True, verbose=0)
    history = {name: [float(v) for v in values] for name, values in fit.history.items()}
    with atomic_path(model_dir / MODEL_FILE) as tmp:
        model.save(tmp)
    write_json(model_dir / "labels.json", index["labels"])
    write_json(model_dir / "history.json", history)
    return TrainedModel(model_dir / MODEL_FILE, tuple(index["labels"]), params.epochs, history)

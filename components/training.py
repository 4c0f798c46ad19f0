"""Training: a small Keras video classifier, a per-frame CNN followed by a temporal layer that sees frame order.

Each epoch ends with a checkpoint of the whole model (weights, optimizer state) and the
epoch number, so a killed training resumes where it stopped; a finished one removes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from components.errors import VidopsError
from components.extraction import INDEX, load_split
from components.io import atomic_path, write_json
from components.layout import MODEL_FILE
from components.params import ClassifierParams

CHECKPOINTS = "checkpoints"  # under the model folder, while a training runs


@dataclass(frozen=True)
class TrainedModel:
    path: Path
    labels: tuple[str, ...]
    epochs: int  # trained in all, resumed ones included
    resumed_from: int  # the epoch a checkpoint resumed from; 0 for a fresh start
    history: dict[str, list[float]]


def build_classifier(frames: int, size: int, n_classes: int, params: ClassifierParams) -> keras.Model:
    """Frames uint8 [N, S, S, 3] in, class probabilities out."""
    inputs = keras.Input((frames, size, size, 3), dtype="uint8", name="frames")
    x = layers.Rescaling(1 / 255)(inputs)
    if params.temporal == "2plus1d":
        return _r2plus1d(inputs, x, n_classes, params)
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
    # float32 out even under mixed precision: softmax in float16 loses the small probabilities
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"classifier_{params.temporal}")


def _r2plus1d(inputs: Any, x: Any, n_classes: int, params: ClassifierParams) -> keras.Model:
    """The (2+1)D variant: every block a spatial 1x3x3 convolution, then a temporal 3x1x1 one."""
    for filters in params.filters:
        x = layers.Conv3D(filters, (1, 3, 3), padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.Conv3D(filters, (3, 1, 1), padding="same", activation="relu")(x)
        x = layers.MaxPooling3D((1, 2, 2))(x)
    x = layers.GlobalMaxPooling3D()(x)
    x = layers.Dropout(0.3)(x)
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="classifier_2plus1d")


def train_classifier(features_dir: Path, model_dir: Path, params: ClassifierParams) -> TrainedModel:
    """Fit the classifier on the train split; write `model.keras`, `labels.json` and `history.json` under `model_dir`.

    Resumes from `model_dir/checkpoints/` when it holds a checkpoint of the same params and data.
    """
    frames, labels = load_split(features_dir, "train")
    index = json.loads((features_dir / INDEX).read_text())
    _check_inputs(frames, labels, index["labels"], features_dir)
    strategy = prepare_device(params)
    key = _run_key(features_dir, params)
    checkpoints = model_dir / CHECKPOINTS
    state = _read_state(checkpoints, key)
    keras.utils.set_random_seed(params.seed)
    with strategy.scope():
        if state:
            model = keras.models.load_model(checkpoints / MODEL_FILE)
        else:
            model = build_classifier(frames.shape[1], frames.shape[2], len(index["labels"]), params)
            model.compile(
                optimizer=keras.optimizers.Adam(params.learning_rate),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
                jit_compile=params.xla and bool(tf.config.list_physical_devices("GPU")),
            )
    start = state["epoch"] if state else 0
    history = state["history"] if state else {}
    callbacks = [
        # halve the rate when the loss stalls; a fixed decay (cosine was tried) starved slow starters on the demo data
        keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=max(2, params.patience // 2)),
        keras.callbacks.EarlyStopping(monitor="loss", patience=params.patience, restore_best_weights=True),
        _Checkpoint(checkpoints, key, history),
    ]
    model.fit(frames, labels, batch_size=params.batch_size, epochs=params.epochs, initial_epoch=start,
              shuffle=True, verbose=0, callbacks=callbacks)  # fmt: skip
    with atomic_path(model_dir / MODEL_FILE) as tmp:
        model.save(tmp)
    write_json(model_dir / "labels.json", index["labels"])
    write_json(model_dir / "history.json", history)
    shutil.rmtree(checkpoints, ignore_errors=True)  # finished: the next training starts afresh
    return TrainedModel(model_dir / MODEL_FILE, tuple(index["labels"]), len(history.get("loss", [])), start, history)


def prepare_device(params: ClassifierParams) -> tf.distribute.Strategy:
    """Memory growth, precision, determinism; the distribution strategy for the devices there are.

    MultiWorkerMirroredStrategy when TF_CONFIG names workers, MirroredStrategy over several
    GPUs, else the default strategy (one GPU or the CPU).
    """
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if params.mixed_precision and gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
    if params.deterministic:
        tf.config.experimental.enable_op_determinism()
    if json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}).get("worker"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _check_inputs(frames: np.ndarray, labels: np.ndarray, names: list[str], features_dir: Path) -> None:
    """Fail before the first epoch on what would waste it: no clips, or a class without any."""
    if len(labels) == 0:
        raise VidopsError(f"{features_dir}: the train split has no usable clips")
    missing = [name for i, name in enumerate(names) if not np.any(labels == i)]
    if missing:
        raise VidopsError(f"{features_dir}: no training clips for class(es) {', '.join(missing)}")


def _run_key(features_dir: Path, params: ClassifierParams) -> str:
    """What a checkpoint belongs to: these params and exactly these shards."""
    shards = (features_dir / "index.csv").read_bytes()
    return hashlib.sha256(params.model_dump_json().encode() + shards).hexdigest()[:16]


def _read_state(checkpoints: Path, key: str) -> dict[str, Any] | None:
    state_file = checkpoints / "state.json"
    if not state_file.is_file() or not (checkpoints / MODEL_FILE).is_file():
        return None
    state = json.loads(state_file.read_text())
    return state if state.get("key") == key else None


class _Checkpoint(keras.callbacks.Callback):
    """After each epoch: the model with its optimizer, then the epoch and history that go with it."""

    def __init__(self, folder: Path, key: str, history: dict[str, list[float]]) -> None:
        super().__init__()
        self.folder, self.key, self.history = folder, key, history

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        for name, value in (logs or {}).items():
            if name != "learning_rate":
                self.history.setdefault(name, []).append(float(value))
        with atomic_path(self.folder / MODEL_FILE) as tmp:
            self.model.save(tmp)
        # written second: a state file always describes a whole checkpoint
        write_json(self.folder / "state.json", {"key": self.key, "epoch": epoch + 1, "history": self.history})

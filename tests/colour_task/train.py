"""The task's training: its input batches and model handed to vidops's shared loop (checkpoints, resume, early stopping,
the epoch hook), as every built-in task's are."""

from __future__ import annotations

from pathlib import Path

from colour_task.model import build
from colour_task.params import ColourParams
from vidops.components import inputs, training
from vidops.components.tasks import TrainedModel


def train_colour(
    features_dir: Path, model_dir: Path, params: ColourParams, on_epoch: training.EpochHook | None = None
) -> TrainedModel:
    import tensorflow as tf

    strategy = training.prepare_device(params)
    split, held = training.train_split(features_dir, ("frames",), params.validation_fraction)
    feed = inputs.split_feed(split, held, params)
    batches = (
        inputs.read_split(split, ("frames",), feed, params.seed).repeat().batch(params.batch_size, drop_remainder=True)
    )
    data = (batches.prefetch(tf.data.AUTOTUNE), max(1, len(split.paths) // params.batch_size))
    validation = inputs.read_split(held, ("frames",), feed).batch(params.batch_size) if held else None
    frames, size = split.shapes["frames"][:2]
    recipe = training.Recipe(
        lambda: build(frames, size, len(split.names), params), "sparse_categorical_crossentropy", ["accuracy"]
    )
    return training.fit(strategy, recipe, data, validation, split.names, features_dir, model_dir, params, on_epoch)

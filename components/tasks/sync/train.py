"""The sync model fitted on windows of the train split's clips shifted against their audio, through the shared loop."""

from __future__ import annotations

from pathlib import Path

from vidops.components import encoders, inputs, training
from vidops.components.errors import VidopsError
from vidops.components.tasks import TrainedModel
from vidops.components.tasks.sync.inputs import sync_dataset, sync_validation
from vidops.components.tasks.sync.model import build_sync
from vidops.components.tasks.sync.params import SyncParams


def train_sync(
    features_dir: Path, model_dir: Path, params: SyncParams, on_epoch: training.EpochHook | None = None
) -> TrainedModel:
    """Fit the sync model; its labels are the offsets -K..K; outputs as every task's (`training.fit`)."""
    encoders.check_weights("sync", params)  # a weights file that does not fit: named before any epoch
    strategy = training.prepare_device(params)
    split, held = training.train_split(features_dir, ("frames", "audio"), params.validation_fraction)
    frames = split.shapes["frames"][0]
    if frames < params.span:
        raise VidopsError(
            f"{features_dir}: clips of {frames} frames are too short for train.sync.window + 2 x train.sync.max_offset"
            f" = {params.span} frames; extract more frames or lower the window or the offset"
        )
    data = sync_dataset(split, params, inputs.split_feed(split, held, params))
    validation = sync_validation(held, params) if held else None
    offsets = tuple(str(k) for k in params.offsets)
    recipe = training.Recipe(
        build=lambda: build_sync(split.shapes["frames"][1], split.shapes["audio"][2], params),
        loss={"offset": "sparse_categorical_crossentropy", "in_sync": "binary_crossentropy"},
        metrics={"offset": ["accuracy"], "in_sync": ["accuracy"]},
    )
    return training.fit(strategy, recipe, data, validation, offsets, features_dir, model_dir, params, on_epoch)

"""Audio-video sync: a window of frames and the audio around it in, the audio's offset in frames out.

Self-supervised: any clip with sound is training data, so one class of clips is enough.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vidops.components import encoders
from vidops.components.errors import VidopsError
from vidops.components.params import ExtractParams, GenerateParams, ModelRegistryParams, Task
from vidops.components.tasks import TaskDefaults, TaskSpec, TrainedModel
from vidops.components.tasks.sync.generate import generate
from vidops.components.tasks.sync.params import SyncParams


def train(features_dir: Path, model_dir: Path, params: SyncParams, on_epoch: Any = None) -> TrainedModel:
    from vidops.components.tasks.sync.train import train_sync  # TensorFlow: in the training process only

    return train_sync(features_dir, model_dir, params, on_epoch)


def evaluate(model_dir: Path, features_dir: Path, reports_dir: Path, params: SyncParams) -> Any:
    from vidops.components.tasks.sync.evaluation import evaluate_sync

    return evaluate_sync(model_dir, features_dir, reports_dir, params)


def headline(metrics: dict[str, Any]) -> str:
    return (
        f"offset within +-1 frame {metrics['accuracy_within_1']:.3f}, exact {metrics['accuracy']:.3f},"
        f" mean error {metrics['mae_frames']:.2f} frames on {metrics['examples']} windows of {metrics['test_clips']}"
        f" held-out clips (chance {metrics['chance_within_1']:.3f})"
    )


def input_example(clip: dict[str, np.ndarray], params: SyncParams) -> dict[str, np.ndarray]:
    """One in-sync window of the clip, with its audio."""
    from vidops.components.tasks.sync.inputs import sync_windows

    return sync_windows(clip["frames"], clip["audio"], [params.max_offset], [0], params)


def predict(model: Any, clip: Any, labels: list[str], params: SyncParams) -> dict[str, Any]:
    """The offset of the audio against the video, in frames (positive: the sound comes late), over every window of the
    clip."""
    from vidops.components.tasks.sync.inputs import sync_windows

    starts = range(0, len(clip.frames) - params.span + 1, params.window)
    if not starts:
        raise VidopsError(f"{len(clip.frames)} frames: the sync model needs at least {params.span}")
    windows = sync_windows(clip.frames, clip.audio, [s + params.max_offset for s in starts], [0] * len(starts), params)
    out = model.predict(windows, verbose=0)
    mean = out["offset"].mean(axis=0)
    best = int(np.argmax(mean))
    return {"offset": params.offsets[best], "confidence": float(mean[best]), "in_sync": float(out["in_sync"].mean())}


def check(name: Task, extract: ExtractParams, train: SyncParams) -> None:
    """Combinations that would fail only after extraction."""
    encoders.check_params(name, train, extract.size)
    if extract.sampler != "dense":
        raise ValueError(f"extract.{name}.sampler: the sync model needs consecutive frames: use dense")
    if extract.audio == "none":
        raise ValueError(f"extract.{name}.audio: the sync model needs audio features: use logmel or mfcc")
    if train.span > extract.frames:
        raise ValueError(
            f"train.{name}.window + 2 x train.{name}.max_offset = {train.span} frames, but extract.{name}.frames is"
            f" {extract.frames}: no window fits; lower the window or the offset, or extract more frames"
        )


SPEC = TaskSpec(
    name="sync",
    defaults=TaskDefaults(
        dataset="demo-sync",
        # every frame of a 4 s run, for windows shifted against the audio
        extract=ExtractParams(sampler="dense", frames=100, size=32, short_clips="skip"),
        train=SyncParams(),
        registry=ModelRegistryParams(model_name="vidops-sync", metric="accuracy_within_1", floor=0.5),
        generate=GenerateParams(clips_per_class=64, duration_s=4.0),
    ),
    train=train,
    evaluate=evaluate,
    metrics=("accuracy", "accuracy_within_1", "in_sync_accuracy"),
    headline=headline,
    input_example=input_example,
    predict=predict,
    check=check,
    preflight=encoders.check_weights_present,
    needs_audio=True,  # it learns from sound
    min_classes=1,  # and not from labels
    labelled=False,  # its classes are the offsets -K..K
    generate=generate,  # a talking mouth whose audio follows it
    order=2,
    curves=("loss", "offset_accuracy", "in_sync_accuracy"),
    plots={
        "sync accuracy within 1 frame against context length": {
            "template": "linear",
            "x": "frames",
            "y": {"context.csv": "accuracy_within_1"},
        }
    },
)

"""The sync model (SyncNet-style): for every candidate offset, an LSTM over [visual features | audio steps] scores how
well the window's frames and the shifted sound go together."""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

from vidops.components.layers import OverSpace, frame_encoder
from vidops.components.tasks.sync.params import SyncParams


def build_sync(size: int, audio_features: int, params: SyncParams) -> keras.Model:
    """Frames uint8 [T, S, S, 3] and audio [T + 2K, 4, F] in; the offset k as (2K+1)-way probabilities, and in-sync.

    For every candidate k, an LSTM reads the window frame by frame as [visual features |
    the 4 audio steps k frames later] and scores how well they go together; the offset head
    is a softmax over the 2K+1 scores, the in-sync head the score of k = 0. T may vary.
    """
    frames = keras.Input((None, size, size, 3), dtype="uint8", name="frames")
    audio = keras.Input((None, 4, audio_features), dtype="float32", name="audio")
    visual = OverSpace("mean")(frame_encoder(frames, size, params))  # each frame's map to one vector
    visual = layers.Dense(params.units, activation="relu")(visual)
    sound = layers.Reshape((-1, 4 * audio_features))(audio)
    sound = layers.LayerNormalization()(sound)  # log-mel levels differ by recording; their shape over time is the cue
    sound = layers.Dense(params.units, activation="relu")(sound)
    pairs = OffsetPairs(params.max_offset)([visual, sound])  # [B x (2K+1), T, 2 units]: one sequence per candidate
    lstm = layers.LSTM(params.units)
    scores = (layers.Bidirectional(lstm) if params.bidirectional else lstm)(pairs)
    scores = OffsetScores(params.max_offset)(layers.Dense(1, dtype="float32")(scores))  # [B, 2K+1]
    offset = layers.Softmax(name="offset", dtype="float32")(scores)
    centre = layers.Reshape((len(params.offsets), 1))(scores)
    centre = layers.Cropping1D((params.max_offset, params.max_offset))(centre)
    in_sync = layers.Activation("sigmoid", name="in_sync", dtype="float32")(layers.Flatten()(centre))
    return keras.Model({"frames": frames, "audio": audio}, {"offset": offset, "in_sync": in_sync}, name="av_sync")


@keras.saving.register_keras_serializable(package="vidops")
class OffsetPairs(layers.Layer):
    """[visual [B, T, D], audio [B, T + 2K, D]] -> [B x (2K+1), T, 2D], one sequence of pairs per candidate offset.

    The audio covers the window and K frames either side, shifted by the unknown true k:
    its step i is the sound of window frame i - K + k. Candidate c = k + K therefore pairs
    window frame t with audio step t + 2K - c, which lines sound and frames up again when c
    is the true class.
    """

    def __init__(self, max_offset: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_offset = max_offset

    def call(self, inputs: list[Any]) -> Any:
        visual, sound = inputs
        window = ops.shape(visual)[1]
        shifted = [
            sound[:, 2 * self.max_offset - c : 2 * self.max_offset - c + window] for c in range(2 * self.max_offset + 1)
        ]
        audio = ops.stack(shifted, axis=1)
        video = ops.broadcast_to(ops.expand_dims(visual, 1), (*ops.shape(audio)[:3], ops.shape(visual)[2]))
        pairs = ops.concatenate([video, audio], axis=-1)
        return ops.reshape(pairs, (-1, window, ops.shape(pairs)[3]))  # candidates become batch rows for the LSTM

    def compute_output_shape(self, input_shapes: list[tuple[Any, ...]]) -> tuple[Any, ...]:
        visual, sound = input_shapes
        return (None, visual[1], visual[2] + sound[2])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "max_offset": self.max_offset}


@keras.saving.register_keras_serializable(package="vidops")
class OffsetScores(layers.Layer):
    """[B x (2K+1), 1] -> [B, 2K+1]: the candidates' scores back as one row per example."""

    def __init__(self, max_offset: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_offset = max_offset

    def call(self, scores: Any) -> Any:
        return ops.reshape(scores, (-1, 2 * self.max_offset + 1))

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (None, 2 * self.max_offset + 1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "max_offset": self.max_offset}

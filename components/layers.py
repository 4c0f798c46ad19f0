"""The Keras parts every task's model shares: the frame encoder and the layers that apply it to every frame.

A model takes uint8 frames and rescales inside, so a served model takes what extraction writes. It sees the frames
through the frame encoder its params name (components/encoders.py): the small CNN below, trained from scratch, or a
Keras application applied to every frame. A task's own layers live in its model.py, which `load_model` imports.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
from keras import layers, ops

from vidops.components import encoders
from vidops.components.params import FrameEncoderParams


def frame_encoder(frames: Any, size: int, params: FrameEncoderParams) -> Any:
    """uint8 frames [B, N, S, S, 3] -> each frame's feature map [B, N, h, w, C], through the encoder `params` names."""
    if params.encoder == encoders.SMALL:
        # Each frame with its change from the one before: the moving shape stands out from a busy background at full
        # resolution, where a temporal layer after the pooled maps sees a move of a fraction of a cell. On the demo data
        # the classifier's loss leaves chance far sooner with it (measured: benchmarks/README.md).
        x = layers.Rescaling(1 / 255)(frames)
        if not params.two_stream:
            return frame_cnn(FrameDifferences()(x), params.filters)
        # Two streams (Simonyan and Zisserman, 2014): what is there from the frame alone, how it moves from the change
        # alone, each its own CNN. Through one CNN the captioner learns shapes slowly; through two it names the shape of
        # a held-out combination of shape, colour and motion right more often, for a longer training (measured:
        # benchmarks/README.md).
        return layers.Concatenate()([frame_cnn(x, params.filters), frame_cnn(FrameChanges()(x), params.filters)])
    application = encoders.application(params.encoder, size, params.encoder_weights)
    application.trainable = not params.freeze_encoder
    return PerFrame(application)(frames)


def frame_cnn(x: Any, filters: tuple[int, ...]) -> Any:
    """Per-frame conv blocks (3x3 conv, batch norm, ReLU, 2x2 pooling) over [B, N, S, S, C]."""
    for width in filters:
        x = layers.MaxPooling3D((1, 2, 2))(conv_block(x, width))
    return x


def conv_block(x: Any, width: int) -> Any:
    """A 3x3 convolution of every frame, batch norm, ReLU.

    A 1x3x3 Conv3D is a 2-D convolution applied to every frame; Keras 3's TimeDistributed
    would call the layer once per frame in a Python loop (and batch-normalise each frame
    alone), several times slower for the same arithmetic.
    """
    x = layers.Conv3D(width, (1, 3, 3), padding="same", use_bias=False)(x)
    # built under a strategy of several replicas (several GPUs, several workers), the batch's statistics are taken over
    # all of them, so every replica keeps the same moving statistics as it keeps the same weights
    synchronized = tf.distribute.get_strategy().num_replicas_in_sync > 1
    return layers.Activation("relu")(layers.BatchNormalization(synchronized=synchronized)(x))


@keras.saving.register_keras_serializable(package="vidops")
class FrameDifferences(layers.Layer):
    """[B, N, S, S, C] -> [B, N, S, S, 2C]: each frame with its difference from the frame before (zero for the
    first)."""

    def call(self, frames: Any) -> Any:
        return ops.concatenate([frames, _changes(frames)], axis=-1)

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (*input_shape[:-1], 2 * input_shape[-1])


@keras.saving.register_keras_serializable(package="vidops")
class FrameChanges(layers.Layer):
    """[B, N, S, S, C] -> the same shape: each frame's difference from the frame before (zero for the first)."""

    def call(self, frames: Any) -> Any:
        return _changes(frames)


def _changes(frames: Any) -> Any:
    return ops.concatenate([ops.zeros_like(frames[:, :1]), frames[:, 1:] - frames[:, :-1]], axis=1)


@keras.saving.register_keras_serializable(package="vidops")
class OverSpace(layers.Layer):
    """[B, N, h, w, C] -> [B, N, C]: each frame's map reduced over space, by its maximum or its mean.

    A reduction, not MaxPooling3D: TensorFlow's CPU kernel of the pooling has no float16, the
    compute type under mixed precision.
    """

    def __init__(self, reduce: str = "max", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reduce = reduce

    def call(self, maps: Any) -> Any:
        return ops.max(maps, axis=(2, 3)) if self.reduce == "max" else ops.mean(maps, axis=(2, 3))

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (*input_shape[:2], input_shape[4])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "reduce": self.reduce}


@keras.saving.register_keras_serializable(package="vidops")
class PerFrame(layers.Wrapper):
    """An image model applied to every frame: [B, N, S, S, 3] -> [B, N, ...], as one call over B x N images.

    Keras 3's TimeDistributed would call it once per frame in a Python loop. The frames go in
    as floats 0..255, the range a Keras application's own preprocessing takes. A frozen model
    runs in inference mode, so its batch norm keeps the statistics it was loaded with.
    """

    def build(self, input_shape: tuple[Any, ...]) -> None:
        self.layer.build((None, *input_shape[2:]))
        self.built = True

    def call(self, frames: Any, training: bool | None = None) -> Any:
        shape = ops.shape(frames)
        images = ops.cast(ops.reshape(frames, (-1, *frames.shape[2:])), self.compute_dtype)
        features = self.layer(images, training=training if self.layer.trainable else False)
        return ops.reshape(features, (shape[0], shape[1], *features.shape[1:]))

    def compute_output_shape(self, input_shape: tuple[Any, ...]) -> tuple[Any, ...]:
        return (*input_shape[:2], *self.layer.compute_output_shape((None, *input_shape[2:]))[1:])


def load_model(path: Path, package: str | None = None) -> keras.Model:
    """A saved vidops model. This module registers the shared layers it may hold; `package`, the task's, registers its
    own (its `model` module, when it has one)."""
    if package and importlib.util.find_spec(f"{package}.model") is not None:  # dependencies.MODEL_MODULE
        importlib.import_module(f"{package}.model")
    return keras.models.load_model(path)

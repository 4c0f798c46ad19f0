"""The classifier: a clip's frames through the frame encoder, a temporal layer that sees their order, class
probabilities."""

from __future__ import annotations

import keras
from keras import layers

from vidops.components.layers import OverSpace, conv_block, frame_encoder
from vidops.components.tasks.classification.params import ClassifierParams


def build_classifier(frames: int, size: int, n_classes: int, params: ClassifierParams) -> keras.Model:
    """Frames uint8 [N, S, S, 3] in, class probabilities out."""
    inputs = keras.Input((frames, size, size, 3), dtype="uint8", name="frames")
    # The temporal layer keeps the spatial grid: a shape moving left and one moving right
    # give the same frames in reverse order, and only a filter over (time, y, x) tells them apart.
    if params.temporal == "2plus1d":  # every block a spatial 1x3x3 convolution, then a temporal 3x1x1 one
        x = layers.Rescaling(1 / 255)(inputs)
        for width in params.filters:
            x = conv_block(x, width)
            x = layers.Conv3D(width, (3, 1, 1), padding="same", activation="relu")(x)
            x = layers.MaxPooling3D((1, 2, 2))(x)
        x = layers.GlobalMaxPooling3D()(x)
    elif params.temporal == "conv":
        x = frame_encoder(inputs, size, params)
        x = layers.Conv3D(64, 3, padding="same", activation="relu")(x)
        x = layers.Conv3D(64, 3, padding="same", activation="relu")(x)
        # pooled over space, not time: a shape that grows and one that shrinks have the same frames in the other
        # order, and a maximum over time confuses the demo's zoom in and zoom out (benchmarks/README.md)
        x = layers.Flatten()(OverSpace("max")(x))
    else:
        x = layers.ConvLSTM2D(48, 3, padding="same")(frame_encoder(inputs, size, params))
        x = layers.GlobalMaxPooling2D()(x)
    x = layers.Dropout(0.3)(x)
    # float32 out even under mixed precision: softmax in float16 loses the small probabilities
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"classifier_{params.temporal}")

"""Two layers over a clip's mean colour."""

from __future__ import annotations

import keras

from colour_task.params import ColourParams


def build(frames: int, size: int, classes: int, params: ColourParams) -> keras.Model:
    inputs = keras.Input((frames, size, size, 3), dtype="uint8", name="frames")
    x = keras.layers.GlobalAveragePooling3D()(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Dense(params.units, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax", name="probabilities")(x))

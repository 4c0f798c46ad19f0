"""The frame encoder, a swappable part of both models: vidops's small per-frame CNN or a Keras application.

`train.<task>.encoder` names it, `encoder_weights` says where a Keras application's weights come
from, `freeze_encoder` keeps them as loaded. The table below is the one place that maps a name to
its Keras constructor. Keras is imported inside the functions that build, so the params and the
checks that run before any work stay light.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidops.components.errors import VidopsError
from vidops.components.params import FrameEncoderParams, Task

SMALL = "small"  # vidops's per-frame CNN (components/layers.py), trained from scratch
NO_WEIGHTS = "none"
IMAGENET = "imagenet"


@dataclass(frozen=True)
class Application:
    """A Keras application used without its top, as a per-frame feature extractor."""

    constructor: str  # keras.applications.<constructor>
    imagenet_file: str  # its ImageNet weights without the top, as Keras's cache names them
    min_size: int = 32  # the smallest frame side Keras builds it for (include_top=False)


APPLICATIONS = {
    "mobilenet_v3_small": Application("MobileNetV3Small", "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
    "efficientnet_b0": Application("EfficientNetB0", "efficientnetb0_notop.h5"),
}
ENCODERS = (SMALL, *APPLICATIONS)
# Batch norm's moving-average momentum for an application trained from scratch: Keras's default, as the small
# encoder's. MobileNetV3's own 0.999 leaves the inference statistics near their start after a training as short as the
# demo's, and an untrained MobileNetV3 in inference mode gives all but zero features.
SCRATCH_MOMENTUM = 0.99


def check_params(task: Task, params: FrameEncoderParams, size: int) -> None:
    """A ValueError naming the key when `train.<task>`'s encoder params cannot work together or with frames of `size`
    px."""
    key, encoder, weights = f"train.{task}", params.encoder, params.encoder_weights
    if encoder not in ENCODERS:
        raise ValueError(f"{key}.encoder: no encoder {encoder!r}; known encoders: {', '.join(ENCODERS)}")
    if encoder == SMALL:
        if weights != NO_WEIGHTS:
            raise ValueError(
                f"{key}.encoder_weights: the small encoder learns from scratch; weights apply to a Keras application "
                f"({', '.join(APPLICATIONS)})"
            )
    elif size < APPLICATIONS[encoder].min_size:
        raise ValueError(
            f"{key}.encoder: {encoder} needs frames of at least {APPLICATIONS[encoder].min_size} px, "
            f"but they are {size} px; raise the extract size"
        )
    if weights not in (NO_WEIGHTS, IMAGENET) and not weights.endswith(".h5"):
        raise ValueError(
            f"{key}.encoder_weights: expected none, imagenet or the path of a .weights.h5 file, got {weights!r}"
        )
    if params.freeze_encoder and weights == NO_WEIGHTS:
        raise ValueError(
            f"{key}.freeze_encoder: freezing an encoder without weights keeps it random; "
            "set encoder_weights, or freeze_encoder: false"
        )


def check_weights_present(task: Task, params: FrameEncoderParams) -> None:
    """A VidopsError naming the key when `train.<task>`'s encoder weights are not on this machine; no TensorFlow, so it
    runs before any work.

    ImageNet weights count only when Keras's cache already holds them: vidops never downloads
    during a run (a worker may have no network, or a proxy a quick probe cannot see through).
    """
    key, encoder, weights = f"train.{task}", params.encoder, params.encoder_weights
    if weights == NO_WEIGHTS:
        return
    if weights == IMAGENET:
        app = APPLICATIONS[encoder]
        cached = keras_cache() / app.imagenet_file
        if not cached.is_file():
            raise VidopsError(
                f"{key}.encoder_weights: imagenet weights for {encoder} are not in Keras's cache ({cached}), and "
                f"vidops does not download them: pass a local .weights.h5 file as {key}.encoder_weights, or fill the "
                "cache on a machine with network "
                f"(python -c 'import keras; keras.applications.{app.constructor}(include_top=False)') and copy "
                f"{app.imagenet_file} there"
            )
    elif not Path(weights).is_file():
        raise VidopsError(f"{key}.encoder_weights: no weights file {weights}")


def weights_file(params: Any) -> Path | None:
    """The file an encoder's weights come from (the user's .weights.h5, or ImageNet's in Keras's cache), whose content a
    cached or resumed training must match; None when it learns from scratch (or the task's params have no encoder)."""
    weights = getattr(params, "encoder_weights", NO_WEIGHTS)
    if weights == NO_WEIGHTS:
        return None
    return keras_cache() / APPLICATIONS[params.encoder].imagenet_file if weights == IMAGENET else Path(weights)


def keras_cache() -> Path:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models, else ~/.keras/models (keras.utils.get_file's rule)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"


def check_weights(task: Task, params: FrameEncoderParams) -> None:
    """`check_weights_present`, then the weights loaded into the encoder: a VidopsError naming the key and file when
    they do not fit. It builds the encoder, so it belongs in the training process, before the first epoch."""
    check_weights_present(task, params)
    key, encoder, weights = f"train.{task}", params.encoder, params.encoder_weights
    if encoder == SMALL or weights in (NO_WEIGHTS, IMAGENET):
        return
    try:
        application(encoder, None, weights)
    except VidopsError:
        raise
    except Exception as exc:
        # Keras says what did not fit in its own words: a ValueError, an OSError for a file that is not HDF5
        raise VidopsError(
            f"{key}.encoder_weights: {weights} does not fit {encoder}: {exc}".replace("\n", " ")
        ) from None


def application(encoder: str, size: int | None, weights: str) -> Any:
    """The Keras application `encoder` without its top: images [S, S, 3] as floats 0..255 in, feature maps out.

    Its own preprocessing (include_preprocessing for MobileNetV3, built into EfficientNet) takes
    0..255, the range of vidops's uint8 frames. `size` None builds it for any frame size.
    """
    import keras

    app = APPLICATIONS[encoder]
    if size is not None and size < app.min_size:
        raise VidopsError(f"{encoder} needs frames of at least {app.min_size} px, got {size} px")
    constructor = getattr(keras.applications, app.constructor)
    # imagenet: Keras takes its cached file (checked present first) and adds the preprocessing those weights were
    # trained with
    model = constructor(
        include_top=False, weights=IMAGENET if weights == IMAGENET else None, input_shape=(size, size, 3)
    )
    if weights == NO_WEIGHTS:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = SCRATCH_MOMENTUM
    elif weights != IMAGENET:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(weights)
        # Keras loads what the file holds and only warns of the parts it lacks, leaving them random
        missing = [str(w.message) for w in caught if "freshly-initialized" in str(w.message)]
        if missing:
            raise ValueError(f"{len(missing)} of its parts are not in the file, e.g. {missing[0]}")
    return model

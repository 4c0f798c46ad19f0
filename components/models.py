"""The two Keras models: a video classifier and an audio-video sync model.

Both take uint8 frames and rescale inside, so a served model takes what extraction writes.
Both see the frames through the frame encoder their params name (components/encoders.py):
the small CNN below, trained from scratch, or a Keras application applied to every frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
from keras import layers, ops

from vidops.components import encoders
from vidops.components.params import CaptionerParams, ClassifierParams, FrameEncoderParams, SyncParams


def build_classifier(frames: int, size: int, n_classes: int, params: ClassifierParams) -> keras.Model:
    """Frames uint8 [N, S, S, 3] in, class probabilities out."""
    inputs = keras.Input((frames, size, size, 3), dtype="uint8", name="frames")
    # The temporal layer keeps the spatial grid: a shape moving left and one moving right
    # give the same frames in reverse order, and only a filter over (time, y, x) tells them apart.
    if params.temporal == "2plus1d":  # every block a spatial 1x3x3 convolution, then a temporal 3x1x1 one
        x = layers.Rescaling(1 / 255)(inputs)
        for width in params.filters:
            x = _spatial(x, width)
            x = layers.Conv3D(width, (3, 1, 1), padding="same", activation="relu")(x)
            x = layers.MaxPooling3D((1, 2, 2))(x)
        x = layers.GlobalMaxPooling3D()(x)
    elif params.temporal == "conv":
        x = frame_encoder(inputs, size, params)
        x = layers.Conv3D(64, 3, padding="same", activation="relu")(x)
        x = layers.Conv3D(64, 3, padding="same", activation="relu")(x)
        # pooled over space, not time: a shape that grows and one that shrinks have the same frames in the other
        # order, and a maximum over time made the demo's zoom out read as zoom in (4 of 84 test clips)
        x = layers.Flatten()(OverSpace("max")(x))
    else:
        x = layers.ConvLSTM2D(48, 3, padding="same")(frame_encoder(inputs, size, params))
        x = layers.GlobalMaxPooling2D()(x)
    x = layers.Dropout(0.3)(x)
    # float32 out even under mixed precision: softmax in float16 loses the small probabilities
    outputs = layers.Dense(n_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"classifier_{params.temporal}")


def frame_encoder(frames: Any, size: int, params: FrameEncoderParams) -> Any:
    """uint8 frames [B, N, S, S, 3] -> each frame's feature map [B, N, h, w, C], through the encoder `params` names."""
    if params.encoder == encoders.SMALL:
        # Each frame with its change from the one before: the moving shape stands out from a busy background at full
        # resolution, where a temporal layer after the pooled maps sees a move of a fraction of a cell. On the demo data
        # the classifier's loss leaves chance in 5 epochs instead of 15-30 (benchmarks/README.md).
        x = layers.Rescaling(1 / 255)(frames)
        if not params.two_stream:
            return _frame_cnn(FrameDifferences()(x), params.filters)
        # Two streams (Simonyan and Zisserman, 2014): what is there from the frame alone, how it moves from the change
        # alone, each its own CNN. Through one CNN the captioner learnt shapes slowly: it named the shape of a held-out
        # combination of shape, colour and motion right 0.79-0.82 of the time, through two 0.93-0.95, at 1.6x the
        # training time (benchmarks/README.md).
        return layers.Concatenate()([_frame_cnn(x, params.filters), _frame_cnn(FrameChanges()(x), params.filters)])
    application = encoders.application(params.encoder, size, params.encoder_weights)
    application.trainable = not params.freeze_encoder
    return PerFrame(application)(frames)


def _frame_cnn(x: Any, filters: tuple[int, ...]) -> Any:
    """Per-frame conv blocks (3x3 conv, batch norm, ReLU, 2x2 pooling) over [B, N, S, S, C]."""
    for width in filters:
        x = layers.MaxPooling3D((1, 2, 2))(_spatial(x, width))
    return x


def _spatial(x: Any, width: int) -> Any:
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


def build_captioner(frames: int, size: int, vocabulary: int, params: CaptionerParams) -> keras.Model:
    """Frames uint8 [N, S, S, 3] and caption tokens [L] (from <start>) in; the next token's logits [L, V] out.

    Two parts the decoding loop calls apart (components/decoding.py): `encoder` (frames -> one
    feature vector per frame, in time) runs once per clip, `decoder` (features, tokens -> logits)
    once per word. A frame's map is max- and mean-pooled: what the shape is, and (the small
    encoder reading frame differences) which way its edges move, wherever it is; a flattened map
    would learn each at every position apart, and overfitted the demo's 400 clips. The decoder is
    an LSTM over the words whose every step attends over the frames (additive or dot-product);
    its output and the attended frames give the next word.

    Nothing holds the whole clip in one vector: each frame's features are its own (no recurrent
    layer over the frames), and the decoder starts from zeros, not from the mean frame. With
    both, the model said a combination of shape, colour and motion it had seen instead of the
    one in front of it (on the demo's held-out combinations 0.50 of clips right, against 0.77 to
    0.80 without them; benchmarks/README.md): each word must come from the frames it attends to.
    """
    video = keras.Input((frames, size, size, 3), dtype="uint8", name="frames")
    maps = frame_encoder(video, size, params)
    pooled = layers.Concatenate()([OverSpace("max")(maps), OverSpace("mean")(maps)])
    features = layers.Dense(params.units, activation="relu")(layers.Dropout(params.dropout)(pooled))
    encoder = keras.Model(video, features, name="encoder")

    seen = keras.Input((frames, params.units), name="features")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    words = layers.Embedding(vocabulary, params.embedding)(tokens)  # no mask: the loss skips <pad>, and the LSTM reads forwards
    said = layers.LSTM(params.units, return_sequences=True)(words)
    attention = layers.AdditiveAttention() if params.attention == "additive" else layers.Attention()
    context = attention([said, seen])  # [B, L, units]: each step's weighted frames
    mixed = layers.Dense(params.units, activation="tanh")(layers.Concatenate()([said, context]))
    logits = layers.Dense(vocabulary, dtype="float32", name="logits")(layers.Dropout(params.dropout)(mixed))
    decoder = keras.Model({"features": seen, "tokens": tokens}, logits, name="decoder")

    inputs = {"frames": video, "tokens": keras.Input((None,), dtype="int32", name="tokens")}
    return keras.Model(inputs, decoder({"features": encoder(inputs["frames"]), "tokens": inputs["tokens"]}), name="captioner")


@keras.saving.register_keras_serializable(package="vidops")
class FrameDifferences(layers.Layer):
    """[B, N, S, S, C] -> [B, N, S, S, 2C]: each frame with its difference from the frame before (zero for the first)."""

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
        shifted = [sound[:, 2 * self.max_offset - c : 2 * self.max_offset - c + window] for c in range(2 * self.max_offset + 1)]
        audio = ops.stack(shifted, axis=1)
        video = ops.broadcast_to(ops.expand_dims(visual, 1), ops.shape(audio)[:3] + (ops.shape(visual)[2],))
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


def load_model(path: Path) -> keras.Model:
    """A saved vidops model; importing this module registers the custom layers it may hold."""
    return keras.models.load_model(path)

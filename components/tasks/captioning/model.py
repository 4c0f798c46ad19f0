"""The captioner: the frame encoder's per-frame features, kept in time, and an LSTM decoder that attends over them."""

from __future__ import annotations

import keras
from keras import layers

from vidops.components.layers import OverSpace, frame_encoder
from vidops.components.tasks.captioning.params import CaptionerParams


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
    words = layers.Embedding(vocabulary, params.embedding)(
        tokens
    )  # no mask: the loss skips <pad>, and the LSTM reads forwards
    said = layers.LSTM(params.units, return_sequences=True)(words)
    attention = layers.AdditiveAttention() if params.attention == "additive" else layers.Attention()
    context = attention([said, seen])  # [B, L, units]: each step's weighted frames
    mixed = layers.Dense(params.units, activation="tanh")(layers.Concatenate()([said, context]))
    logits = layers.Dense(vocabulary, dtype="float32", name="logits")(layers.Dropout(params.dropout)(mixed))
    decoder = keras.Model({"features": seen, "tokens": tokens}, logits, name="decoder")

    inputs = {"frames": video, "tokens": keras.Input((None,), dtype="int32", name="tokens")}
    return keras.Model(
        inputs, decoder({"features": encoder(inputs["frames"]), "tokens": inputs["tokens"]}), name="captioner"
    )

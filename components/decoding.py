"""Captions from a trained captioner: beam search (greedy at a beam of one) over its decoder, with a length penalty.

The encoder runs once per clip; the decoder runs once per word over the whole prefix so far
(captions are short, and a stateless call keeps the saved model the one that was trained).
All clips and beams go through each call together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vidops.components.text import END, PAD, START, Vocabulary

CLIPS_A_CALL = 64  # clips decoded together: beam_size x this many prefixes a decoder call


@dataclass(frozen=True)
class Caption:
    text: str
    score: float  # log-probability over the length penalty: higher is better
    log_probability: float


def length_penalty(words: np.ndarray, alpha: float) -> np.ndarray:
    """GNMT's ((5 + |Y|) / 6) ** alpha (Wu et al. 2016): without it a beam prefers short captions."""
    return ((5.0 + words) / 6.0) ** alpha


def encode_frames(model: Any, frames: np.ndarray) -> np.ndarray:
    """Each clip's frame features [clips, N, units], from the model's encoder part."""
    return np.asarray(model.get_layer("encoder").predict(frames, batch_size=CLIPS_A_CALL, verbose=0), np.float32)


def captions(
    model: Any, features: np.ndarray, vocabulary: Vocabulary, beam_size: int, max_length: int, alpha: float
) -> list[list[Caption]]:
    """For each clip's frame features (`encode_frames`'s [clips, N, units]), its beam's captions, best first."""
    decoder = model.get_layer("decoder")
    out: list[list[Caption]] = []
    for start in range(0, len(features), CLIPS_A_CALL):
        out += beam_search(decoder, features[start : start + CLIPS_A_CALL], vocabulary, beam_size, max_length, alpha)
    return out


def beam_search(
    decoder: Any, features: np.ndarray, vocabulary: Vocabulary, beam_size: int, max_length: int, alpha: float
) -> list[list[Caption]]:
    """Beam search over `features` [B, N, U]: at each step every live beam's words are extended by every token, and the
    `beam_size` best by length-normalised log-probability survive; a beam that said <end> is kept as it is."""
    clips, k, size = len(features), beam_size, len(vocabulary)
    repeated = np.repeat(features, k, axis=0)
    tokens = np.full((clips, k, 1), START, np.int32)
    logp = np.full((clips, k), -np.inf)
    logp[:, 0] = 0.0  # one live beam to start with: the others would only repeat it
    words = np.zeros((clips, k), np.int32)  # words said so far, <end> not counted
    done = np.zeros((clips, k), bool)
    for said in range(max_length + 1):
        logits = np.asarray(decoder({"features": repeated, "tokens": tokens.reshape(clips * k, -1)}, training=False))[
            :, -1
        ]
        step = _log_softmax(logits.astype(np.float64)).reshape(clips, k, size)
        step[..., PAD] = step[..., START] = -np.inf  # never said
        if said == 0:  # a caption says at least one word
            step[..., END] = -np.inf
        elif said == max_length:  # max_length words said: only <end> is left
            step[..., :END] = step[..., END + 1 :] = -np.inf
        step[done] = -np.inf
        step[done, PAD] = 0.0  # a finished beam carries on unchanged
        total = logp[..., None] + step  # [B, k, V]
        length = (
            words[..., None]
            + np.where(done[..., None], 0, 1)
            - (np.arange(size) == END)[None, None, :] * ~done[..., None]
        )
        ranked = total / length_penalty(np.maximum(length, 1), alpha)
        best = np.argsort(-ranked.reshape(clips, -1), axis=1, kind="stable")[:, :k]
        beam, token = best // size, best % size
        rows = np.arange(clips)[:, None]
        tokens = np.concatenate([tokens[rows, beam], token[..., None]], axis=2)
        logp = total[rows, beam, token]
        words = length[rows, beam, token]
        done = done[rows, beam] | (token == END)
        if done.all():
            break
    return [_ranked(tokens[c], logp[c], words[c], vocabulary, alpha) for c in range(clips)]


def _ranked(
    tokens: np.ndarray, logp: np.ndarray, words: np.ndarray, vocabulary: Vocabulary, alpha: float
) -> list[Caption]:
    scores = logp / length_penalty(np.maximum(words, 1), alpha)
    order = [i for i in np.argsort(-scores, kind="stable") if np.isfinite(scores[i])]
    return [Caption(vocabulary.decode(tokens[i]), float(scores[i]), float(logp[i])) for i in order]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))

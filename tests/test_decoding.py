"""Beam search over a decoder whose next-word probabilities the test sets by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vidops.components.decoding import beam_search, length_penalty
from vidops.components.text import END, START, Vocabulary

VOCABULARY = Vocabulary.from_tokens(["<pad>", "<unk>", "<start>", "<end>", "a", "b", "c"])
A, B, C = 4, 5, 6


class TableDecoder:
    """A decoder as the captioner's is called: {features, tokens [rows, t]} -> logits [rows, t, V]; the last step's
    logits are log(probabilities) the table gives for the prefix (uniform over the words for a prefix it lacks)."""

    def __init__(self, table: dict[tuple[int, ...], dict[int, float]]) -> None:
        self.table = table

    def __call__(self, inputs: dict[str, np.ndarray], training: bool = False) -> np.ndarray:
        tokens = inputs["tokens"]
        logits = np.full((len(tokens), tokens.shape[1], len(VOCABULARY)), -30.0, np.float32)
        for row, prefix in enumerate(tokens):
            probabilities = self.table.get(tuple(int(t) for t in prefix[1:]), {A: 1 / 3, B: 1 / 3, C: 1 / 3})
            for token, p in probabilities.items():
                logits[row, -1, token] = math.log(p)
        return logits


# Greedy takes "a" (0.5) and then has only 0.3 for its best next word: 0.15 in all. "b" starts lower (0.4) but is
# sure of its end (0.9): 0.36. A beam of two keeps "b" alive and finds it.
TRAP = {
    (): {A: 0.5, B: 0.4, C: 0.1},
    (A,): {A: 0.3, B: 0.3, C: 0.1, END: 0.3},
    (B,): {END: 0.9, C: 0.1},
    (A, A): {END: 1.0},
    (A, B): {END: 1.0},
    (A, C): {END: 1.0},
}


def test_a_beam_finds_the_likelier_caption_that_greedy_decoding_misses() -> None:
    features = np.zeros((1, 2, 4), np.float32)
    greedy = beam_search(TableDecoder(TRAP), features, VOCABULARY, beam_size=1, max_length=5, alpha=0.0)[0]
    beam = beam_search(TableDecoder(TRAP), features, VOCABULARY, beam_size=2, max_length=5, alpha=0.0)[0]
    assert greedy[0].text in ("a a", "a b", "a")
    assert greedy[0].log_probability == pytest.approx(math.log(0.5 * 0.3), abs=1e-4)
    assert beam[0].text == "b"
    assert beam[0].log_probability == pytest.approx(math.log(0.4 * 0.9), abs=1e-4)
    assert len(beam) == 2 and beam[1].score <= beam[0].score


def test_the_length_penalty_lets_a_longer_caption_win() -> None:
    # "c" then <end>: log 0.5; "a b c" then <end>: log(0.45 x 0.9 x 0.9 x 0.9) = log 0.33. With alpha 0 the short one
    # wins; with a strong penalty the long one's per-length score wins.
    table = {
        (): {C: 0.5, A: 0.45, B: 0.05},
        (C,): {END: 1.0},
        (A,): {B: 0.9, END: 0.1},
        (A, B): {C: 0.9, END: 0.1},
        (A, B, C): {END: 0.9, A: 0.1},
    }
    features = np.zeros((1, 2, 4), np.float32)
    short = beam_search(TableDecoder(table), features, VOCABULARY, beam_size=3, max_length=6, alpha=0.0)[0]
    long = beam_search(TableDecoder(table), features, VOCABULARY, beam_size=3, max_length=6, alpha=2.0)[0]
    assert short[0].text == "c"
    assert long[0].text == "a b c"
    assert long[0].score == pytest.approx(
        math.log(0.45 * 0.9 * 0.9 * 0.9) / length_penalty(np.array(3.0), 2.0), abs=1e-4
    )


def test_clips_are_decoded_apart_and_a_caption_stops_at_max_length() -> None:
    class PerClip(TableDecoder):
        def __call__(self, inputs: dict[str, np.ndarray], training: bool = False) -> np.ndarray:
            logits = np.full((len(inputs["tokens"]), inputs["tokens"].shape[1], len(VOCABULARY)), -30.0, np.float32)
            word = np.where(inputs["features"][:, 0, 0] > 0, A, B)  # clip 0 says "a a a ...", clip 1 "b b b ..."
            logits[np.arange(len(word)), -1, word] = 0.0
            return logits

    features = np.zeros((2, 2, 4), np.float32)
    features[0] = 1.0
    out = beam_search(PerClip({}), features, VOCABULARY, beam_size=2, max_length=4, alpha=0.6)
    assert out[0][0].text == "a a a a"
    assert out[1][0].text == "b b b b"
    assert all(token not in caption.text for beam in out for caption in beam for token in ("<start>", "<end>", "<pad>"))
    assert START not in (A, B)

"""The captioner's text layer: words, the vocabulary's encode/decode, BLEU-4 and CIDEr-D on hand-checkable corpora."""

import math

import numpy as np
import pytest

from vidops.components.errors import VidopsError
from vidops.components.text import END, PAD, SPECIALS, START, UNK, Vocabulary, bleu4, cider_d, words

TRAINING = ["A man is cooking.", "A man slices an onion!", "The woman is cooking pasta", "a dog runs"]


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("Left.", ["left"]),
        ("  A man,   is\tcooking!\n", ["a", "man", "is", "cooking"]),
        ('well-known (really) "chef"...', ["well", "known", "really", "chef"]),
        ("Don't touch the man's hat", ["dont", "touch", "the", "mans", "hat"]),
        ("don\u2019t", ["dont"]),
        ("Émile CAFÉ naïve", ["émile", "café", "naïve"]),
        ("cafe\u0301", ["café"]),  # e + combining accent is the same word as é
        ("Straße 3 Kinder, 東京タワー", ["straße", "3", "kinder", "東京タワー"]),
        ("a <end> b + c 🙂", ["a", "end", "b", "c"]),  # symbols separate words: no word spells a special token
        ("...", []),
        ("", []),
    ],
)
def test_words(caption: str, expected: list[str]) -> None:
    assert words(caption) == expected


def test_vocabulary_orders_words_by_count_then_alphabet() -> None:
    vocabulary = Vocabulary.build(TRAINING)
    assert vocabulary.tokens[:4] == SPECIALS == ("<pad>", "<unk>", "<start>", "<end>")
    assert (PAD, UNK, START, END) == (0, 1, 2, 3)
    # a: 3, cooking/is/man: 2, then the words seen once, alphabetically
    assert vocabulary.tokens[4:] == (
        "a",
        "cooking",
        "is",
        "man",
        "an",
        "dog",
        "onion",
        "pasta",
        "runs",
        "slices",
        "the",
        "woman",
    )
    assert len(vocabulary) == 16


def test_encode_decode_round_trip() -> None:
    vocabulary = Vocabulary.build(TRAINING)
    ids, truncated = vocabulary.encode("A man is cooking.", max_length=6)
    assert ids.dtype == np.int32 and ids.shape == (8,) and not truncated
    assert ids.tolist() == [START, 4, 7, 6, 5, END, PAD, PAD]
    assert vocabulary.decode(ids) == "a man is cooking"
    for caption in TRAINING:
        assert vocabulary.decode(vocabulary.encode(caption, 10)[0]) == " ".join(words(caption))


def test_unknown_words_at_inference_are_unk() -> None:
    vocabulary = Vocabulary.build(TRAINING)
    ids, _ = vocabulary.encode("A zebra is cooking", max_length=5)
    assert ids.tolist() == [START, 4, UNK, 6, 5, END, PAD]
    assert vocabulary.decode(ids) == "a <unk> is cooking"


def test_decode_stops_at_end_and_rejects_foreign_ids() -> None:
    vocabulary = Vocabulary.build(TRAINING)
    assert vocabulary.decode([START, 7, PAD, 5, END, 4, 4]) == "man cooking"
    assert vocabulary.decode(np.array([7, 5])) == "man cooking"  # no <end>: every word
    with pytest.raises(VidopsError, match="token id 16 is outside this vocabulary of 16 tokens"):
        vocabulary.decode([START, 16, END])
    with pytest.raises(VidopsError, match="token id -1"):
        vocabulary.decode([-1])


def test_min_count_and_max_size() -> None:
    assert Vocabulary.build(TRAINING, min_count=2).tokens[4:] == ("a", "cooking", "is", "man")
    assert Vocabulary.build(TRAINING, min_count=3).tokens[4:] == ("a",)
    assert Vocabulary.build(TRAINING, max_size=6).tokens == (*SPECIALS, "a", "cooking")
    assert Vocabulary.build(TRAINING, min_count=2, max_size=100).tokens[4:] == ("a", "cooking", "is", "man")
    # words cut by min_count are <unk>
    vocabulary = Vocabulary.build(TRAINING, min_count=2)
    assert vocabulary.encode("a dog is cooking", 4)[0].tolist() == [START, 4, UNK, 6, 5, END]


def test_truncation_is_flagged_and_end_kept() -> None:
    vocabulary = Vocabulary.build(TRAINING)
    ids, truncated = vocabulary.encode("a man is cooking pasta", max_length=3)
    assert truncated
    assert ids.tolist() == [START, 4, 7, 6, END]
    assert not vocabulary.encode("a man is", max_length=3)[1]
    with pytest.raises(VidopsError, match="max_length=0"):
        vocabulary.encode("a man", max_length=0)


def test_too_small_vocabulary_is_an_error() -> None:
    with pytest.raises(VidopsError, match=r"max_size=4: .* 4 special tokens"):
        Vocabulary.build(TRAINING, max_size=4)
    with pytest.raises(VidopsError, match=r"min_count=4: .* \(12 distinct words, the most frequent seen 3 times"):
        Vocabulary.build(TRAINING, min_count=4)
    with pytest.raises(VidopsError, match=r"min_count=1: .* \(0 distinct words"):
        Vocabulary.build(["...", ""])


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (("<unk>", "<pad>", "<start>", "<end>", "a"), "must start with"),
        (("a", "b"), "must start with"),
        ((*SPECIALS, "a", "b", "a"), r"tokens \['a'\] appear more than once"),
        ((*SPECIALS, "<unk>"), r"tokens \['<unk>'\] appear more than once"),
        ((*SPECIALS, "Man", "a b"), r"tokens \['Man', 'a b'\] are not words"),
    ],
)
def test_from_tokens_rejects_bad_lists(tokens: tuple[str, ...], message: str) -> None:
    with pytest.raises(VidopsError, match=message):
        Vocabulary.from_tokens(tokens)


def test_from_tokens_restores_a_saved_vocabulary() -> None:
    built = Vocabulary.build(TRAINING)
    restored = Vocabulary.from_tokens(list(built.tokens))
    assert restored == built
    assert restored.encode("a dog runs", 4)[0].tolist() == built.encode("a dog runs", 4)[0].tolist()


def test_bleu4_matches_sacrebleu_with_equal_reference_counts() -> None:
    import sacrebleu

    hypotheses = ["a man is cooking pasta in a kitchen", "a dog runs on the grass", "two people are talking"]
    references = [
        ["a man is cooking in a kitchen", "a chef cooks pasta"],
        ["a dog is running on grass", "the dog runs across the green grass"],
        ["two men are talking to each other", "people talk"],
    ]
    expected = sacrebleu.corpus_bleu(hypotheses, [list(stream) for stream in zip(*references, strict=True)]).score
    assert bleu4(hypotheses, references) == pytest.approx(expected)
    assert 0 < expected < 100


def test_bleu4_hand_checkable_cases() -> None:
    references = [["a man is cooking pasta in the kitchen"], ["the dog runs in the big green park"]]
    assert bleu4(
        ["a man is cooking pasta in the kitchen", "the dog runs in the big green park"], references
    ) == pytest.approx(100)
    # the same words, capitals and punctuation aside
    assert bleu4(
        ["A man is cooking pasta in the kitchen.", "The dog runs, in the big green park!"], references
    ) == pytest.approx(100)
    # nothing in common: 0
    assert bleu4(["two birds fly", "a car drives"], references) == 0
    # the words reversed: every unigram matches (16 of 16) and no bigram, trigram or 4-gram does (0 of 14, 12, 10);
    # sacreBLEU's default 'exp' smoothing puts 100 / (2^k * total) for the k-th order without a match, and the lengths
    # are equal (brevity penalty 1): (100 * 100/(2*14) * 100/(4*12) * 100/(8*10)) ** (1/4) = 100 / 107520 ** (1/4)
    reversed_words = bleu4(["kitchen the in pasta cooking is man a", "park green big the in runs dog the"], references)
    assert reversed_words == pytest.approx(100 / (2 * 14 * 4 * 12 * 8 * 10) ** 0.25)  # 5.52


def test_bleu4_with_varying_numbers_of_references() -> None:
    import sacrebleu

    hypotheses = ["a man is cooking", "a dog"]
    references = [
        ["a man is cooking", "someone cooks", "a person is making food", "a man cooks food"],
        ["a dog is running on the grass"],
    ]
    score = bleu4(hypotheses, references)
    # clip 2's missing references are None in sacreBLEU's streams: left out. An empty string would be a reference of
    # length 0, the closest to the 2-word hypothesis, and would lift the brevity penalty.
    streams = [
        ["a man is cooking", "a dog is running on the grass"],
        ["someone cooks", None],
        ["a person is making food", None],
        ["a man cooks food", None],
    ]
    assert score == pytest.approx(sacrebleu.corpus_bleu(hypotheses, streams).score)
    with_empty = [[ref if ref is not None else "" for ref in stream] for stream in streams]
    assert score < sacrebleu.corpus_bleu(hypotheses, with_empty).score
    assert 0 < score < 100
    # a hypothesis that matches one of four references exactly, or its only reference, scores 100
    assert bleu4(["a person is making food", "a dog is running on the grass"], references) == pytest.approx(100)
    # a reference added to one clip can only raise the score (BLEU takes the best match per n-gram)
    assert bleu4(hypotheses, [references[0], [*references[1], "a dog"]]) > score


@pytest.mark.parametrize("metric", [bleu4, cider_d])
def test_metrics_reject_bad_corpora(metric) -> None:
    with pytest.raises(VidopsError, match="empty"):
        metric([], [])
    with pytest.raises(VidopsError, match="2 hypotheses but 1 reference lists"):
        metric(["a dog", "a cat"], [["a dog"]])
    with pytest.raises(VidopsError, match=r"clips \[1\] have no reference"):
        metric(["a dog", "a cat"], [["a dog"], []])
    with pytest.raises(VidopsError, match="not bare strings"):
        metric(["a dog"], ["a dog"])


def test_cider_d_by_hand() -> None:
    hypotheses = ["the dog runs", "cat cat cat"]
    references = [["The dog runs.", "a dog sleeps"], ["the cat"]]
    # idf = log(2 clips) - log(clips whose references have the n-gram): "the" is in both clips' references, so its
    # weight is 0; every other n-gram (seen or not) weighs L = log 2 per occurrence. Per n, sim = clipped dot / norms.
    L = math.log(2)
    # clip 1 against "the dog runs" (the same words; length 3 vs 3: penalty 1): 1-grams {the: 0, dog: L, runs: L} on
    # both sides; 2-grams {the dog: L, dog runs: L} and the 3-gram {the dog runs: L} likewise; no 4-gram: 0
    same = [(L * L + L * L) / (math.sqrt(2) * L) ** 2, (L * L + L * L) / (math.sqrt(2) * L) ** 2, L * L / L**2, 0]
    # against "a dog sleeps" (penalty 1): only "dog" is shared, and {a: L, dog: L, sleeps: L} has norm sqrt(3) L
    other = [L * L / (math.sqrt(2) * L * math.sqrt(3) * L), 0, 0, 0]
    clip1 = 10 * (sum(same) + sum(other)) / 4 / 2  # mean over n, mean over its 2 references, times 10
    # clip 2 against "the cat": 1-grams {cat: 3L} vs {the: 0, cat: L}, clipped: min(3L, L) * L / (3L * L) = 1/3;
    # 2-grams {cat cat: 2L} vs {the cat: L}: none shared; length 3 vs 2: penalty exp(-1 / (2 * 6^2))
    clip2 = 10 * (min(3 * L, L) * L / (3 * L * L)) * math.exp(-(1**2) / (2 * 6**2)) / 4 / 1
    expected = 100 * (clip1 + clip2) / 2
    assert expected == pytest.approx(254.1075, abs=1e-4)
    assert cider_d(hypotheses, references) == pytest.approx(expected, rel=1e-12)


CORPUS_REFERENCES = [
    ["a man is cooking pasta in a kitchen", "a chef cooks pasta", "someone is cooking"],
    ["a dog runs on the grass", "a brown dog is running", "the dog plays outside"],
    ["two people are talking", "a man and a woman talk"],
]


def test_cider_d_prefers_the_closer_hypothesis() -> None:
    exact = ["a man is cooking pasta in a kitchen", "a dog runs on the grass", "two people are talking"]
    partial = ["a man is in a room", "a dog runs", "two people"]
    wrong = ["a car drives fast", "a plane flies high", "a cat sleeps"]
    scores = [cider_d(hypotheses, CORPUS_REFERENCES) for hypotheses in (exact, partial, wrong)]
    assert scores[0] > scores[1] > scores[2] >= 0


def test_cider_d_length_penalty() -> None:
    references = [["a dog runs on the grass"], ["a cat sleeps on the sofa"]]
    long = [
        "a dog runs on the grass grass grass",
        "a cat sleeps on the sofa sofa sofa",
    ]  # 2 words more than its reference
    unpenalised = cider_d(long, references, sigma=1e9)
    # every comparison is 2 words off, so the penalty is one factor: exp(-2^2 / (2 sigma^2))
    assert cider_d(long, references, sigma=1.0) == pytest.approx(unpenalised * math.exp(-2), rel=1e-9)
    assert cider_d(long, references) == pytest.approx(unpenalised * math.exp(-4 / 72), rel=1e-9)
    # equal lengths: no penalty whatever sigma
    same_length = ["a dog runs on the sofa", "a cat sleeps on the grass"]
    assert cider_d(same_length, references, sigma=0.5) == pytest.approx(cider_d(same_length, references, sigma=1e9))


def test_cider_d_ignores_reference_and_clip_order() -> None:
    hypotheses = ["a man is cooking", "a dog is running on grass", "people talk"]
    score = cider_d(hypotheses, CORPUS_REFERENCES)
    assert score > 0
    assert cider_d(hypotheses, [list(reversed(clip)) for clip in CORPUS_REFERENCES]) == pytest.approx(score, rel=1e-12)
    assert cider_d(hypotheses[::-1], CORPUS_REFERENCES[::-1]) == pytest.approx(score, rel=1e-12)


def test_cider_d_edge_cases() -> None:
    # one clip: every n-gram is in "all" clips' references, so every weight is log(1) - log(1) = 0 (as in coco-caption)
    assert cider_d(["a dog runs"], [["a dog runs"]]) == 0
    # an empty hypothesis scores 0, not NaN
    assert cider_d(["", "a dog runs"], [["a cat sleeps"], ["a dog runs"]]) == pytest.approx(100 * (0 + 10 * 3 / 4) / 2)

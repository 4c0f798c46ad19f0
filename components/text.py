"""The captioner's text layer: captions to token ids and back, and the caption metrics (BLEU-4, CIDEr-D).

Both metrics read captions through `words()`, as coco-caption reads them through its PTB tokenizer, so a raw
reference ("A man is cooking.") and a decoded caption ("a man is cooking") compare word for word.
"""

from __future__ import annotations

import math
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from vidops.components.errors import VidopsError

SPECIALS = ("<pad>", "<unk>", "<start>", "<end>")  # ids 0, 1, 2, 3 in every vocabulary
PAD, UNK, START, END = 0, 1, 2, 3
CIDER_N = 4  # n-grams of 1 to 4 words, as CIDEr-D counts them
_APOSTROPHES = frozenset("'\u2019\u02bc")  # removed, not split on: "don't" and "man's" stay one word each


def words(caption: str) -> list[str]:
    """Lower-cased words of a caption: punctuation dropped, whitespace collapsed (Unicode-aware; 'Left.' -> 'left').

    A word is a run of Unicode letters, marks and digits; every other character (punctuation, symbols, spaces,
    controls) separates words, except apostrophes, which are dropped. No word can spell a special token.
    """
    text = unicodedata.normalize("NFC", caption).lower()  # "é" typed as e + accent is the same word as "é"
    kept = ("" if c in _APOSTROPHES else c if unicodedata.category(c)[0] in "LMN" else " " for c in text)
    return "".join(kept).split()


@dataclass(frozen=True)
class Vocabulary:
    """The captioner's tokens: SPECIALS first, then words by descending training count, ties alphabetical."""

    tokens: tuple[str, ...]
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tokens = tuple(self.tokens)
        if tokens[: len(SPECIALS)] != SPECIALS:
            raise VidopsError(
                f"vocabulary: it must start with {SPECIALS} (ids 0 to {len(SPECIALS) - 1}), "
                f"not {tokens[: len(SPECIALS)]}; was it built by Vocabulary.build?"
            )
        duplicates = sorted(token for token, count in Counter(tokens).items() if count > 1)
        if duplicates:
            raise VidopsError(
                f"vocabulary: tokens {duplicates[:10]} appear more than once; each token must have one id"
            )
        malformed = [token for token in tokens[len(SPECIALS) :] if words(token) != [token]]
        if malformed:
            raise VidopsError(
                f"vocabulary: tokens {malformed[:10]} are not words as text.words() makes them; "
                "captions could never reach them"
            )
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "_ids", {token: i for i, token in enumerate(tokens)})

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1, max_size: int | None = None) -> Vocabulary:
        """The vocabulary of the training captions: words seen at least `min_count` times, the most frequent first, at
        most `max_size` tokens in all (specials included); any other word will be encoded as <unk>."""
        if max_size is not None and max_size <= len(SPECIALS):
            raise VidopsError(
                f"max_size={max_size}: the vocabulary holds the {len(SPECIALS)} special tokens and at least one word; "
                f"set max_size above {len(SPECIALS)}"
            )
        counts = Counter(word for caption in captions for word in words(caption))
        kept = sorted(
            (word for word, count in counts.items() if count >= min_count), key=lambda word: (-counts[word], word)
        )
        if not kept:
            most = max(counts.values(), default=0)
            found = f"{len(counts)} distinct words, the most frequent seen {most} times"
            raise VidopsError(
                f"min_count={min_count}: no word of the training captions qualifies ({found}); "
                "lower min_count or check the captions"
            )
        limit = None if max_size is None else max_size - len(SPECIALS)
        return cls(SPECIALS + tuple(kept[:limit]))

    @classmethod
    def from_tokens(cls, tokens: Sequence[str]) -> Vocabulary:
        """A saved vocabulary (its `tokens`, in id order), checked: SPECIALS lead, no token twice, every other a
        word."""
        return cls(tuple(tokens))

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, caption: str, max_length: int) -> tuple[np.ndarray, bool]:
        """int32 ids, `max_length + 2` of them: <start>, the caption's words (unknown ones as <unk>), <end>, then <pad>;
        and whether the caption had more than `max_length` words and was cut (its <end> is kept)."""
        if max_length < 1:
            raise VidopsError(f"max_length={max_length}: a caption needs room for at least one word")
        caption_words = words(caption)
        kept = [self._ids.get(word, UNK) for word in caption_words[:max_length]]
        ids = np.full(max_length + 2, PAD, dtype=np.int32)
        ids[: len(kept) + 2] = [START, *kept, END]
        return ids, len(caption_words) > max_length

    def decode(self, ids: Iterable[int]) -> str:
        """The caption that `ids` spell: words joined by spaces, up to the first <end>; <start> and <pad> are skipped,
        <unk> is shown as "<unk>"."""
        out = []
        for i in map(int, ids):
            if i == END:
                break
            if not 0 <= i < len(self.tokens):
                raise VidopsError(
                    f"token id {i} is outside this vocabulary of {len(self.tokens)} tokens; "
                    "the model was trained with another vocabulary"
                )
            if i not in (START, PAD):
                out.append(self.tokens[i])
        return " ".join(out)


def bleu4(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 by sacreBLEU (0-100), every hypothesis against its own references (any number per clip).

    Captions are read as `words()` first; sacreBLEU's default tokenizer ('13a') then has nothing left to split and
    lowercase=False changes nothing, so the score is that of the words the captioner is trained on, punctuation
    left out (as coco-caption scores them), and the settings are sacreBLEU's defaults.
    """
    from sacrebleu.metrics import BLEU

    _check_corpus(hypotheses, references)
    hyps = [" ".join(words(h)) for h in hypotheses]
    refs = [[" ".join(words(r)) for r in clip] for clip in references]
    # sacreBLEU takes one stream per reference position; a clip with fewer references has None in the streams
    # beyond its last, which sacreBLEU documents as a missing reference and leaves out
    streams = [[clip[i] if i < len(clip) else None for clip in refs] for i in range(max(map(len, refs)))]
    return float(BLEU(tokenize="13a", lowercase=False).corpus_score(hyps, streams).score)


def cider_d(hypotheses: Sequence[str], references: Sequence[Sequence[str]], sigma: float = 6.0) -> float:
    """Corpus CIDEr-D (Vedantam et al. 2015, as coco-caption's CiderD computes it), on the 0-100 scale papers report
    (x100).

    Follows pyciderevalcap/ciderD/ciderD_scorer.py of vrama91/cider with df_mode="corpus" (the same formula as
    coco-caption's pycocoevalcap/cider): tf-idf vectors of 1- to 4-grams, idf from the references of this corpus;
    per n, the hypothesis's weights clipped by the reference's, cosine-normalised, times a Gaussian length
    penalty; averaged over n and over a clip's references, times 10; the mean over clips, times 100.
    """
    _check_corpus(hypotheses, references)
    hyps = [_ngram_counts(words(h)) for h in hypotheses]
    refs = [[_ngram_counts(words(r)) for r in clip] for clip in references]
    # document frequency: the number of clips with the n-gram in any of their references
    document_frequency = Counter(gram for clip in refs for gram in set().union(*clip))
    log_clips = math.log(len(refs))

    def tf_idf(counts: Counter[tuple[str, ...]]) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
        vectors: list[dict[tuple[str, ...], float]] = [{} for _ in range(CIDER_N)]
        for gram, count in counts.items():
            vectors[len(gram) - 1][gram] = count * (log_clips - math.log(max(1, document_frequency[gram])))
        norms = [math.sqrt(sum(w * w for w in vector.values())) for vector in vectors]
        # the caption's length in words; coco counts its bigrams, which gives the same difference whenever both
        # captions have a word (and with an empty one the score is 0 either way)
        return vectors, norms, sum(count for gram, count in counts.items() if len(gram) == 1)

    scores = []
    for hyp, clip in zip(hyps, refs, strict=True):
        hyp_vectors, hyp_norms, hyp_length = tf_idf(hyp)
        total = 0.0
        for ref in clip:
            ref_vectors, ref_norms, ref_length = tf_idf(ref)
            penalty = math.exp(-((hyp_length - ref_length) ** 2) / (2 * sigma**2))
            for h, r, h_norm, r_norm in zip(hyp_vectors, ref_vectors, hyp_norms, ref_norms, strict=True):
                if h_norm and r_norm:  # a zero vector (no n-gram of this order, or only ones every clip has) scores 0
                    overlap = sum(min(weight, r.get(gram, 0.0)) * r.get(gram, 0.0) for gram, weight in h.items())
                    total += overlap / (h_norm * r_norm) * penalty
        scores.append(10 * total / CIDER_N / len(clip))
    return 100 * float(np.mean(scores))


def _ngram_counts(caption_words: list[str]) -> Counter[tuple[str, ...]]:
    return Counter(
        tuple(caption_words[i : i + n]) for n in range(1, CIDER_N + 1) for i in range(len(caption_words) - n + 1)
    )


def _check_corpus(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if isinstance(hypotheses, str) or any(isinstance(clip, str) for clip in references):
        raise VidopsError(
            "caption metrics: pass a list of hypotheses and, per clip, a list of reference captions, not bare strings"
        )
    if len(hypotheses) == 0:  # not `not hypotheses`: a numpy array of captions has no truth value
        raise VidopsError("caption metrics: the corpus is empty; there is nothing to score")
    if len(hypotheses) != len(references):
        raise VidopsError(
            f"caption metrics: {len(hypotheses)} hypotheses but {len(references)} reference lists; "
            "give one list of references per hypothesis"
        )
    empty = [i for i, clip in enumerate(references) if len(clip) == 0]
    if empty:
        raise VidopsError(
            f"caption metrics: clips {empty[:10]} have no reference caption; every clip needs at least one"
        )

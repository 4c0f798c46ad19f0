"""The captioner's batches: every (clip, reference caption) pair, the decoder reading the reference from <start>
(teacher forcing) with word dropout, and each next word its target."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vidops.components.errors import VidopsError
from vidops.components.inputs import Feed, Split, crop_clips, plan_feed, read_split
from vidops.components.tasks.captioning.params import CaptionerParams
from vidops.components.text import Vocabulary


@dataclass(frozen=True)
class CaptionIds:
    """Every clip's references as token ids: `ids[c, r]` is clip c's reference r ([max_length + 2], <start> to
    <pad>)."""

    ids: np.ndarray  # int32 [clips, most references, max_length + 2]
    counts: np.ndarray  # int32 [clips]: references each clip has


def caption_ids(split: Split, captions: dict[str, list[str]], vocabulary: Vocabulary, max_length: int) -> CaptionIds:
    """The references of the split's clips, encoded; a clip without any is an error naming it (validation quarantines
    them)."""
    missing = [clip for clip in split.clips if not captions.get(clip)]
    if missing:
        raise VidopsError(
            f"{len(missing)} clip(s) of the features have no caption, e.g. {missing[0]}; "
            "re-run the validate and extract stages"
        )
    most = max((len(captions[clip]) for clip in split.clips), default=1)
    ids = np.zeros((len(split.clips), most, max_length + 2), np.int32)
    counts = np.zeros(len(split.clips), np.int32)
    for c, clip in enumerate(split.clips):
        for r, caption in enumerate(captions[clip]):
            ids[c, r] = vocabulary.encode(caption, max_length)[0]
        counts[c] = len(captions[clip])
    return CaptionIds(ids, counts)


def caption_dataset(
    split: Split, references: CaptionIds, params: CaptionerParams, feed: Feed | None = None
) -> tuple[Any, int]:
    """Training batches of ({frames, tokens}, next tokens): every (clip, reference) pair once an epoch, shuffled.

    Teacher forcing: the decoder reads the reference from <start> and learns each next word.
    A streamed feed shuffles the clips, then each clip's pairs with a batch of their neighbours'.
    """
    import tensorflow as tf

    total = int(references.counts.sum())
    if feed and feed.streamed:
        pairs = _caption_pairs(split, references, feed, params.seed)
        shuffled = pairs.shuffle(params.batch_size, seed=params.seed, reshuffle_each_iteration=True).repeat()
    else:  # every pair in the shuffle buffer: `caption_feed` counts the copies of a clip's frames
        shuffled = (
            _caption_pairs(split, references, feed)
            .shuffle(total, seed=params.seed, reshuffle_each_iteration=True)
            .repeat()
        )
    batches = shuffled.batch(params.batch_size, drop_remainder=True)
    if params.augment:  # crops only: a flip would swap left and right, and colour jitter the colour words
        batches = batches.map(
            lambda x, y: ({**x, "frames": tf.dtypes.saturate_cast(crop_clips(x["frames"]), tf.uint8)}, y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if params.word_dropout:
        batches = batches.map(
            lambda x, y: ({**x, "tokens": _drop_words(x["tokens"], params.word_dropout)}, y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return batches.prefetch(tf.data.AUTOTUNE), max(1, total // params.batch_size)


def _drop_words(tokens: Any, rate: float) -> Any:
    """The words the decoder reads (not what it learns to say), each <unk> with probability `rate` (word dropout, Bowman
    et al. 2016): the next word must then come from the frames, not from the words before it, so a combination of
    attributes never seen in training is still said as the frames show it."""
    import tensorflow as tf

    from vidops.components.text import END, UNK

    dropped = (tf.random.uniform(tf.shape(tokens)) < rate) & (tokens > END)
    return tf.where(dropped, tf.constant(UNK, tokens.dtype), tokens)


def caption_validation(split: Split, references: CaptionIds, params: CaptionerParams, feed: Feed | None = None) -> Any:
    """Validation batches of the same form: every (clip, reference) pair once, in order."""
    import tensorflow as tf

    return _caption_pairs(split, references, feed).batch(params.batch_size).prefetch(tf.data.AUTOTUNE)


def caption_feed(split: Split, held: Split | None, references: CaptionIds, params: CaptionerParams) -> Feed:
    """`split_feed` for the captioner, whose in-memory feed shuffles (clip, reference) pairs: a copy of the frames
    each."""
    pairs = int(references.counts.sum()) + (round(len(held.paths) * references.counts.mean()) if held else 0)
    return plan_feed(split.clip_bytes, pairs, params)


def _caption_pairs(split: Split, references: CaptionIds, feed: Feed | None = None, seed: int | None = None) -> Any:
    """({frames, tokens}, targets) for every reference of every clip, the clips held as `feed` says (shuffled with
    `seed`)."""
    import tensorflow as tf

    clips = read_split(split, ("frames",), feed, seed, extra=(references.ids, references.counts))

    def expand(frames: Any, _: Any, ids: Any, count: Any) -> Any:
        ids = ids[:count]
        frames = tf.repeat(frames[None], count, axis=0)
        return tf.data.Dataset.from_tensor_slices(({"frames": frames, "tokens": ids[:, :-1]}, ids[:, 1:]))

    return clips.flat_map(expand)

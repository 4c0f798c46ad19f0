"""The sync model's examples, made on the fly from each clip: a window of T frames, and the audio of T + 2K frames
around it shifted by k in [-K, K]; the model finds where in that audio the window's sound is, so every clip with audio
is training data for every k."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from vidops.components.audio import STEPS_PER_FRAME
from vidops.components.inputs import Feed, Split, jitter_colours, read_split
from vidops.components.io import read_arrays
from vidops.components.tasks.sync.params import SyncParams

AUDIO_JITTER_STEPS = 2  # training: the audio moves by up to this many steps (10 ms each) either way
EVAL_STARTS = 4  # evaluation: windows per clip and offset, evenly spaced over the clip


def sync_dataset(split: Split, params: SyncParams, feed: Feed | None = None) -> tuple[Any, int]:
    """Training batches of ({frames, audio}, {offset, in_sync}, weights); and batches per epoch, `windows_per_clip`
    random examples a clip.

    The in-sync head sees k = 0 once in 2K + 1 examples; its weights balance the two answers.
    """
    import tensorflow as tf

    window, max_offset, windows_per_clip, seed = params.window, params.max_offset, params.windows_per_clip, params.seed
    clips = read_split(split, ("frames", "audio"), feed, seed).repeat()
    balance = len(params.offsets) / 2  # weight of an in-sync example; an out-of-sync one gets a 2K-th of it

    def windows(frames: Any, audio: Any, _: Any) -> Any:
        def draw(_: Any) -> Any:
            k = tf.random.uniform([], -max_offset, max_offset + 1, tf.int32)
            n = tf.shape(frames)[0]
            start = tf.random.uniform([], tf.maximum(0, max_offset - k), n - window - max_offset - k + 1, tf.int32)
            jitter = (
                tf.random.uniform([], -AUDIO_JITTER_STEPS, AUDIO_JITTER_STEPS + 1, tf.int32) if params.augment else 0
            )
            video, context = sync_window(frames, audio, start, k, params, jitter)
            in_sync = tf.cast(k == 0, tf.float32)
            weight = tf.where(k == 0, balance, balance / (2 * max_offset))
            return (
                {"frames": video, "audio": context},
                {"offset": k + max_offset, "in_sync": in_sync},
                {"offset": 1.0, "in_sync": weight},
            )

        return tf.data.Dataset.range(windows_per_clip).map(draw)

    examples = clips.interleave(windows, cycle_length=8, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    batches = examples.shuffle(8 * windows_per_clip, seed=seed).batch(params.batch_size, drop_remainder=True)
    if params.augment:
        batches = batches.map(
            lambda x, y, w: ({**x, "frames": jitter_colours(x["frames"])}, y, w), num_parallel_calls=tf.data.AUTOTUNE
        )
    return batches.prefetch(tf.data.AUTOTUNE), max(1, len(split.paths) * windows_per_clip // params.batch_size)


def sync_validation(split: Split, params: SyncParams) -> Any:
    """Validation batches shaped as `sync_dataset`'s, drawn without chance: every offset k once per clip, at one window.
    Built a clip at a time each epoch, not held: a clip's 2K + 1 windows take several times the clip's own bytes."""
    import tensorflow as tf

    balance = len(params.offsets) / 2

    def clips() -> Iterator[tuple[dict[str, np.ndarray], ...]]:
        for path in split.paths:
            arrays = read_arrays(path, ["frames", "audio"])
            examples, offsets = sync_examples(arrays["frames"], arrays["audio"], params, starts=1)
            in_sync = offsets == 0
            yield (
                examples,
                {"offset": offsets + params.max_offset, "in_sync": in_sync.astype(np.float32)},
                {
                    "offset": np.ones(len(offsets), np.float32),
                    "in_sync": np.where(in_sync, balance, balance / (2 * params.max_offset)).astype(np.float32),
                },
            )

    frames, audio, each = split.shapes["frames"][1:], split.shapes["audio"][1:], tf.TensorSpec((None,), tf.float32)
    signature = (
        {
            "frames": tf.TensorSpec((None, params.window, *frames), tf.uint8),
            "audio": tf.TensorSpec((None, params.span, *audio), tf.float32),
        },
        {"offset": tf.TensorSpec((None,), tf.int64), "in_sync": each},
        {"offset": each, "in_sync": each},
    )
    examples = tf.data.Dataset.from_generator(clips, output_signature=signature).unbatch()
    return examples.batch(params.batch_size).prefetch(tf.data.AUTOTUNE)


def sync_window(frames: Any, audio: Any, start: Any, k: Any, params: SyncParams, jitter: Any = 0) -> tuple[Any, Any]:
    """Frames [start, start + T) and the audio of frames [start - K + k, start + T + K + k), [T + 2K, 4, F].

    The audio steps are taken `jitter` steps later (clamped to the clip): a sub-frame error
    the model should shrug off.
    """
    import tensorflow as tf

    n, features = tf.shape(audio)[0], tf.shape(audio)[2]
    steps = tf.reshape(audio, [n * STEPS_PER_FRAME, features])
    length = params.span * STEPS_PER_FRAME
    first = tf.clip_by_value(
        (start - params.max_offset + k) * STEPS_PER_FRAME + jitter, 0, n * STEPS_PER_FRAME - length
    )
    context = tf.reshape(steps[first : first + length], [params.span, STEPS_PER_FRAME, features])
    return frames[start : start + params.window], context


def sync_examples(
    frames: np.ndarray, audio: np.ndarray, params: SyncParams, starts: int = EVAL_STARTS
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Evaluation examples of one clip: every offset k at `starts` evenly spaced windows; ({frames, audio}, k)."""
    n, window, max_offset = len(frames), params.window, params.max_offset
    pairs = [
        (start, k)
        for k in params.offsets
        for start in np.unique(
            np.linspace(max(0, max_offset - k), n - window - max_offset - k, starts).round().astype(int)
        )
    ]
    starts, offsets = zip(*pairs, strict=True)
    return sync_windows(frames, audio, starts, offsets, params), np.array(offsets)


def sync_windows(
    frames: np.ndarray, audio: np.ndarray, starts: Any, offsets: Any, params: SyncParams
) -> dict[str, np.ndarray]:
    """Numpy `sync_window` without jitter, for several (start, k): the model's {frames, audio} input."""
    first = [s - params.max_offset + k for s, k in zip(starts, offsets, strict=True)]
    return {
        "frames": np.stack([frames[s : s + params.window] for s in starts]),
        "audio": np.stack([audio[f : f + params.span] for f in first]),
    }

"""The classifier's batches: clips and their labels, augmented by crops, flips (with the labels that a flip mirrors)
and colour jitter."""

from __future__ import annotations

from typing import Any

from vidops.components.inputs import Feed, Split, crop_clips, jitter_colours, read_split


def classifier_dataset(
    split: Split, batch_size: int, augment: bool, seed: int, feed: Feed | None = None
) -> tuple[Any, int]:
    """Training batches of (frames uint8 [B, N, S, S, 3], label), shuffled and, when `augment`, augmented; and batches
    per epoch."""
    import tensorflow as tf

    clips = read_split(split, ("frames",), feed, seed).repeat()
    batches = clips.batch(batch_size, drop_remainder=True)
    if augment:  # a batch at a time: per-clip ops on small tensors cost more in overhead than in arithmetic
        flipped = tf.constant(flip_labels(split.names), tf.int32)
        batches = batches.map(
            lambda frames, labels: augment_clips(frames, labels, flipped), num_parallel_calls=tf.data.AUTOTUNE
        )
    return batches.prefetch(tf.data.AUTOTUNE), max(1, len(split.paths) // batch_size)


def classifier_validation(split: Split, batch_size: int, feed: Feed | None = None) -> Any:
    """Validation batches of (frames, label): every clip once, as it is (no augmentation)."""
    import tensorflow as tf

    return read_split(split, ("frames",), feed).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def flip_labels(names: tuple[str, ...]) -> list[int]:
    """The label of each class once the clip is mirrored left to right: `move_left` <-> `move_right`, others
    unchanged."""
    swap = {"left": "right", "right": "left"}

    def mirrored(name: str) -> str:
        parts = name.replace("-", "_").split("_")
        return "_".join(swap.get(part, part) for part in parts)

    index = {name.replace("-", "_"): i for i, name in enumerate(names)}
    return [index.get(mirrored(name), i) for i, name in enumerate(names)]


def augment_clips(frames: Any, labels: Any, flipped: Any) -> tuple[Any, Any]:
    """Per clip of the batch, one random crop (80-100% of the side), flip, brightness and contrast for all its frames
    alike."""
    import tensorflow as tf

    flip = tf.random.uniform(tf.shape(frames)[:1]) < 0.5
    return jitter_colours(crop_clips(frames, flip)), tf.where(flip, tf.gather(flipped, labels), labels)

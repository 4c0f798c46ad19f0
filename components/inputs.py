"""Input pipelines every task builds on: tf.data over the extracted shards, and the augmentations they share.

Shards are read in parallel (interleave), cached in memory when the split fits the training's memory budget (`Feed`),
shuffled and prefetched; a split that does not fit is streamed from the shards every epoch, its order drawn over the
paths and a shuffle buffer sized to the budget. Every shard is read and checked once before training, so a missing or
damaged shard, or NaNs in the audio, fail before the first epoch. A task's own batches (its examples, its
augmentation) are its inputs.py.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vidops.components.captions import read_captions_csv
from vidops.components.errors import VidopsError
from vidops.components.extraction import usable_rows
from vidops.components.io import read_arrays
from vidops.components.layout import CAPTIONS_FILE, INDEX, SHARDS
from vidops.components.params import FitParams

IN_FLIGHT_BATCHES = 4  # a streamed input's batches being read, augmented or prefetched at once
READ_CYCLE = 8  # shards read at once
# the cache or shuffle buffer takes at most this share of what the batches in flight leave of the budget; the rest is
# tf.data's own buffers and the allocator's slack (`vidops bench scale` measures the peak against the budget)
HELD_SHARE = 0.5
DTYPES = {"frames": np.uint8, "audio": np.float32}  # of the shard arrays the models read


@dataclass(frozen=True)
class Split:
    """The checked shards of one split: paths, integer labels, class names and per-clip array shapes."""

    paths: tuple[Path, ...]
    labels: np.ndarray  # int32, one per shard
    names: tuple[str, ...]  # class names, in label order
    shapes: dict[str, tuple[int, ...]]  # field -> shape of one clip's array, the same in every shard
    # each clip's group (a person, a scene, a source video): clips of a group stay together
    groups: tuple[str, ...] = ()
    clips: tuple[str, ...] = ()  # each clip's path in its dataset, as the index lists it

    @property
    def clip_bytes(self) -> int:
        return _clip_bytes(self.shapes)


def _clip_bytes(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(int(np.prod(shape)) * np.dtype(DTYPES[field]).itemsize for field, shape in shapes.items())


def open_split(features_dir: Path, split: str, fields: tuple[str, ...]) -> Split:
    """Read every usable shard of `split` once and check it holds `fields` with one shape, and finite audio.

    Raises VidopsError naming the shard and what is wrong with it.
    """
    rows = usable_rows(features_dir, split)
    names = tuple(json.loads((features_dir / INDEX).read_text())["labels"])
    paths = [features_dir / SHARDS / shard for shard in rows["shard"]]
    labels = rows["label"].map({name: i for i, name in enumerate(names)}).to_numpy(np.int32)
    # an index from before groups were kept: each clip its own
    groups = tuple(rows["group"] if "group" in rows else rows["path"])
    with ThreadPoolExecutor(8) as pool:
        shapes = list(pool.map(lambda path: _check_shard(path, fields), paths))
    for path, shape in zip(paths, shapes, strict=True):
        if shape != shapes[0]:
            raise VidopsError(
                f"{path}: arrays of shape {shape}, but {paths[0].name} has {shapes[0]}; re-run the extract stage"
            )
    return Split(tuple(paths), labels, names, shapes[0] if shapes else {}, groups, tuple(rows["path"]))


def read_captions(features_dir: Path) -> dict[str, list[str]]:
    """The captions of each extracted clip, by its path in the index (index.csv's `path`), in the file's order."""
    file = features_dir / CAPTIONS_FILE
    if not file.is_file():
        raise VidopsError(
            f"{file}: no captions beside the features; the extract stage writes them for a task whose spec is captioned"
        )
    table = read_captions_csv(file)
    captions: dict[str, list[str]] = {}
    for path, caption in zip(table["path"], table["caption"], strict=True):
        captions.setdefault(path, []).append(caption)
    return captions


def carve_validation(split: Split, fraction: float) -> tuple[Split, Split | None]:
    """(train, validation): about `fraction` of each class's groups, chosen by a hash of the group's name, held out
    for validation; never a class's last group. None when no group can be spared (a tiny split)."""
    held: set[str] = set()
    for label in np.unique(split.labels):
        groups = sorted(
            {g for g, clip_label in zip(split.groups, split.labels, strict=True) if clip_label == label},
            key=lambda g: hashlib.sha256(f"validation:{g}".encode()).hexdigest(),
        )
        held.update(groups[: min(round(len(groups) * fraction), len(groups) - 1)])
    if not held:
        return split, None
    mask = np.array([g in held for g in split.groups])
    return subset(split, ~mask), subset(split, mask)


def subset(split: Split, mask: np.ndarray) -> Split:
    """The clips of `split` where `mask` is true."""
    keep = np.flatnonzero(mask)
    pick = lambda values: tuple(values[i] for i in keep)
    return Split(
        pick(split.paths),
        split.labels[keep],
        split.names,
        split.shapes,
        pick(split.groups),
        pick(split.clips) if split.clips else (),
    )


def _check_shard(path: Path, fields: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    if not path.is_file():
        raise VidopsError(f"{path}: shard listed in the index is missing; re-run the extract stage")
    try:
        arrays = read_arrays(path, fields)
    except KeyError as exc:
        raise VidopsError(f"{path}: shard has no {exc} array; re-run the extract stage") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise VidopsError(f"{path}: shard is damaged ({exc}); re-run the extract stage") from None
    if "audio" in arrays and not np.all(np.isfinite(arrays["audio"])):
        raise VidopsError(f"{path}: audio features hold NaN or infinite values; re-run the extract stage")
    return {field: array.shape for field, array in arrays.items()}


def in_memory(split: Split, field: str) -> np.ndarray:
    """One field of every clip of the split as one array [clips, ...], filled in place: no second copy."""
    out = np.empty((len(split.paths), *split.shapes.get(field, ())), DTYPES[field])
    for slot, path in enumerate(split.paths):
        out[slot] = read_arrays(path, [field])[field]
    return out


def in_chunks(split: Split, field: str, clips: int) -> Iterator[np.ndarray]:
    """`in_memory` of `clips` clips at a time, in the split's order: a split of any size read within a bounded
    memory."""
    for start in range(0, len(split.paths), clips):
        mask = np.zeros(len(split.paths), bool)
        mask[start : start + clips] = True
        yield in_memory(subset(split, mask), field)


@dataclass(frozen=True)
class Feed:
    """How the training input holds its clips within `train.<task>.memory_budget_mb`: cached in memory, cached on disk
    after the first epoch, or streamed; and how many clips its shuffle buffer holds."""

    cache: Literal["memory", "disk", "none"]
    shuffle: int  # clips
    budget: int  # bytes: tf.data's autotuner keeps its buffers within it too

    @property
    def streamed(self) -> bool:
        return self.cache != "memory"


def plan_feed(clip_bytes: int, clips: int, params: FitParams, key: str = "train.<task>") -> Feed:
    """The feed of `clips` clips (training and validation) of `clip_bytes` each, by `params.cache` within the budget.

    Raises VidopsError naming `<key>.memory_budget_mb` when the budget cannot hold the batches in flight, the least any
    feed needs.
    """
    budget, batch_size = params.memory_budget_mb * 1024**2, params.batch_size
    in_flight = (IN_FLIGHT_BATCHES * batch_size + READ_CYCLE) * clip_bytes
    if budget < in_flight:
        raise VidopsError(
            f"{key}.memory_budget_mb: {params.memory_budget_mb} MB cannot hold the training input's batches in flight, "
            f"{_mb(in_flight)} MB ({IN_FLIGHT_BATCHES} batches of {batch_size} clips of {_mb(clip_bytes)} MB, "
            f"and {READ_CYCLE} clips being read); "
            f"raise it, or lower {key}.batch_size"
        )
    held = int((budget - in_flight) * HELD_SHARE)  # bytes of clips the feed may hold
    cache = params.cache
    if cache == "auto":
        cache = "memory" if clips * clip_bytes <= held else "none"
    shuffle = clips if cache == "memory" else max(batch_size, min(clips, held // max(clip_bytes, 1)))
    return Feed(cache, int(shuffle), budget)


def _mb(size: int) -> str:
    return f"{size / 1024**2:.3g}"


def check_budget(features_dir: Path, fields: tuple[str, ...], params: FitParams, key: str) -> None:
    """`plan_feed`'s refusal before any work is done (one shard read): a budget that cannot hold the batches in
    flight."""
    rows = usable_rows(features_dir, "train")
    if len(rows):
        plan_feed(_clip_bytes(_check_shard(features_dir / SHARDS / rows["shard"].iloc[0], fields)), 0, params, key)


def split_feed(split: Split, held: Split | None, params: FitParams) -> Feed:
    """`plan_feed` for a training split and its validation split."""
    return plan_feed(split.clip_bytes, len(split.paths) + (len(held.paths) if held else 0), params)


def read_split(
    split: Split,
    fields: tuple[str, ...],
    feed: Feed | None = None,
    seed: int | None = None,
    extra: tuple[Any, ...] = (),
) -> Any:
    """A tf.data pipeline of (fields..., label, *extra) per clip: parallel interleaved reads, held as `feed` says (in
    memory when no feed is given); shuffled with `seed`, else in the split's order. `extra` are per-clip arrays that
    travel with the clip (the captioner's references).

    A streamed feed draws each epoch's order over the paths (cheap) before reading, so the bounded shuffle buffer
    only mixes neighbours of an order already random.
    """
    import tensorflow as tf

    feed = feed or Feed("memory", len(split.paths), 0)

    def read(path: bytes) -> list[np.ndarray]:
        return list(read_arrays(path.decode(), fields).values())

    def load(path: Any, label: Any, *rest: Any) -> Any:
        arrays = tf.numpy_function(read, [path], [tf.as_dtype(DTYPES[field]) for field in fields], stateful=False)
        shaped = tuple(tf.ensure_shape(array, split.shapes[field]) for array, field in zip(arrays, fields, strict=True))
        return tf.data.Dataset.from_tensors((*shaped, label, *rest))

    source = tf.data.Dataset.from_tensor_slices(([str(path) for path in split.paths], split.labels, *extra))
    if feed.cache == "none" and seed is not None:
        source = source.shuffle(len(split.paths), seed=seed, reshuffle_each_iteration=True)
    clips = source.interleave(load, cycle_length=READ_CYCLE, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if feed.cache == "memory":
        clips = clips.cache()
    elif feed.cache == "disk":
        clips = clips.cache(str(_cache_file()))
    if seed is not None:
        clips = clips.shuffle(min(feed.shuffle, len(split.paths)), seed=seed, reshuffle_each_iteration=True)
    if feed.budget:
        options = tf.data.Options()
        options.autotune.ram_budget = feed.budget
        clips = clips.with_options(options)
    return clips


def _cache_file() -> Path:
    """A fresh file name for a disk cache under TMPDIR, removed when the process exits (a killed one leaves it in
    TMPDIR)."""
    folder = Path(tempfile.mkdtemp(prefix="vidops-input-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder / "clips"


def crop_clips(frames: Any, flip: Any = None) -> Any:
    """Per clip of the batch, one random crop (80-100% of the side) resized back, the same for all its frames, and
    flipped where `flip` says; float out.

    The flip is the crop box read right to left, so cropping, flipping and the cast to float
    are one pass of `crop_and_resize` over the frames.
    """
    import tensorflow as tf

    shape = tf.shape(frames)
    batch, n, size = shape[0], shape[1], shape[2]
    side = tf.random.uniform([batch], 0.8, 1.0)
    top, left = tf.random.uniform([batch]) * (1 - side), tf.random.uniform([batch]) * (1 - side)
    x1, x2 = (
        (left, left + side) if flip is None else (tf.where(flip, left + side, left), tf.where(flip, left, left + side))
    )
    boxes = tf.repeat(tf.stack([top, x1, top + side, x2], axis=1), n, axis=0)  # the clip's box for each of its frames
    flat = tf.reshape(frames, tf.concat([[batch * n], shape[2:]], 0))
    return tf.reshape(tf.image.crop_and_resize(flat, boxes, tf.range(batch * n), tf.stack([size, size])), shape)


def jitter_colours(x: Any) -> Any:
    """Brightness +-10% and contrast 0.8-1.2x about mid-grey, drawn per clip (axis 0) and the same over its frames;
    uint8 out."""
    import tensorflow as tf

    per_clip = tf.concat([tf.shape(x)[:1], tf.ones([tf.rank(x) - 1], tf.int32)], 0)
    contrast = tf.random.uniform(per_clip, 0.8, 1.2)
    shift = 128 * (1 - contrast) + tf.random.uniform(per_clip, -25.5, 25.5)
    return tf.dtypes.saturate_cast(tf.cast(x, tf.float32) * contrast + shift, tf.uint8)

"""`vidops bench scale`'s training input: the classifier's input over an epoch, in a process of its own, under a memory
budget."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidops.benchmarks.scale_projects import OVERRIDES, TASK
from vidops.components.params import load_params

# the training input's budget: the largest dataset's clips do not fit, the smaller ones do (benchmarks/README.md)
INPUT_BUDGET_MB = 64


@dataclass(frozen=True)
class InputRun:
    """Two epochs of the classifier's training input alone, in a process of its own, under a memory budget."""

    asked: str  # train.<task>.cache
    cache: str  # the feed it gave: memory or none (streamed)
    examples_per_s: float  # the second epoch's: the steady state, a cache filled
    peak_mb: float  # the process's peak resident memory (VmHWM) above its state once TensorFlow ran a small feed
    budget_mb: int
    clips: int


def training_input(features: Path, cache: str = "auto", budget_mb: int = INPUT_BUDGET_MB) -> InputRun:
    """`_two_epochs` in a fresh spawned process, so its peak memory is its own."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        return pool.submit(_two_epochs, features, cache, budget_mb).result()


def _two_epochs(features: Path, cache: str, budget_mb: int) -> InputRun:
    import tensorflow as tf  # noqa: F401  (imported before the baseline is read)

    from vidops.components import inputs
    from vidops.components.tasks.classification.inputs import classifier_dataset

    params = load_params(
        None, [*OVERRIDES, f"train.{TASK}.memory_budget_mb={budget_mb}", f"train.{TASK}.cache={cache}"]
    ).train.of(TASK)
    split, held = inputs.carve_validation(inputs.open_split(features, "train", ("frames",)), params.validation_fraction)
    # a few batches through a streamed feed first: TensorFlow's kernels, thread pools and tracing are not the input's
    # memory
    few = inputs.subset(split, np.arange(len(split.paths)) < 4 * params.batch_size)
    warm, steps = classifier_dataset(
        few, params.batch_size, params.augment, params.seed, inputs.Feed("none", params.batch_size, 0)
    )
    for _ in warm.take(2 * steps):
        pass
    baseline = _reset_peak()
    feed = inputs.split_feed(split, held, params)
    data, steps = classifier_dataset(split, params.batch_size, params.augment, params.seed, feed)
    batches = iter(data)
    for _ in range(steps):  # the first epoch: reads every shard (and fills an in-memory cache)
        next(batches)
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM") * 1024 - baseline
    return InputRun(cache, feed.cache, steps * params.batch_size / seconds, peak / 1024**2, budget_mb, len(split.paths))


def _reset_peak() -> int:
    """Reset this process's peak resident memory (VmHWM) to what it holds now, and return that in bytes.

    Not getrusage's ru_maxrss: Linux keeps that across exec, so a spawned process starts with its parent's peak.
    """
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS") * 1024


def _status_kb(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(f"{field}:"))
    return int(line.split()[1])

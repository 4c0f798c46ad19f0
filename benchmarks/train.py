"""`vidops bench train`: training throughput through the real input pipeline against the same examples in memory.

For each task, on demo data it generates and extracts once (kept in the workdir), it times
`model.fit` over the same number of batches after a warm-up epoch (graph tracing, cache
fill); a and b take turns, three runs each, and the best of each counts:
  (a) the anchor: the examples already made and held in memory as tensors, fed by the
      cheapest pipeline there is (from_tensor_slices, shuffle, batch, prefetch);
  (b) the tf.data pipeline training uses: shards read in parallel, cached, shuffled,
      augmented (sync: windows drawn and shifted on the fly), batched, prefetched;
  (c) the same pipeline streamed (`cache: none`, what `auto` picks when the split does not
      fit `memory_budget_mb`): the shards read every epoch, a shuffle buffer of FEW clips;
  (d) the same cached on disk (`cache: disk`) after the first epoch.
The ratio b/a in examples per second is what the input pipeline costs the training; 1 means nothing.
c/b and d/b are what streaming costs against holding the split in memory (target: >= 0.9).

With `--encoder NAME` it instead trains the classifier as the train stage does, once with the
`small` frame encoder (the anchor) and once with NAME (no weights), and scores both on the test
split: accuracy, and training time as a ratio to the anchor's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from vidops.components import inputs
from vidops.components.layout import Layout
from vidops.components.params import Params, Task, load_params
from vidops.components.tasks.classification.inputs import classifier_dataset
from vidops.components.tasks.classification.model import build_classifier
from vidops.components.tasks.sync.inputs import sync_dataset
from vidops.components.tasks.sync.model import build_sync


@dataclass(frozen=True)
class BenchConfig:
    clips_per_class: int = 16  # classification: 7 classes; sync: this many clips
    batches: int = 60  # a timed run, after a warm-up epoch; the best of 3 runs, a and b taking turns, counts


FEW = 64  # clips in the streamed feeds' shuffle buffer
FEEDS = ("a", "b", "c", "d")  # see the docstring


@dataclass(frozen=True)
class Throughput:
    task: Task
    rates: dict[str, float]  # feed -> examples per second


def prepare(
    workdir: Path, config: BenchConfig, tasks: tuple[Task, ...] = ("classification", "sync")
) -> tuple[Layout, Params]:
    """A project under `workdir` with the demo datasets of `tasks` generated, validated and extracted (reused when
    present)."""
    from vidops.components import stages
    from vidops.components.generate import MARKER, generate_dataset

    layout = Layout(workdir.resolve())
    sizes = [f"generate.{task}.clips_per_class={config.clips_per_class}" for task in ("classification", "sync")]
    params = load_params(None, sizes)
    for task in tasks:
        dataset = layout.raw(params.datasets.of(task))
        if not (dataset / MARKER).is_file():
            generate_dataset(dataset, task, params.generate.of(task))
        stages.validate(layout, params, task)
        stages.extract(layout, params, task)
    return layout, params


def run(workdir: Path, config: BenchConfig) -> list[Throughput]:
    layout, params = prepare(workdir, config)
    return [_classification(layout, params, config), _sync(layout, params, config)]


def _classification(layout: Layout, params: Params, config: BenchConfig) -> Throughput:
    p = params.train.classification
    split = inputs.open_split(layout.features("classification"), "train", ("frames",))
    pipelines = {
        feed: classifier_dataset(split, p.batch_size, p.augment, p.seed, _feed(feed, split))[0] for feed in "bcd"
    }
    steps = max(1, len(split.paths) // p.batch_size)
    memory = _in_memory((inputs.in_memory(split, "frames"), split.labels), p.batch_size)
    shape = split.shapes["frames"]

    def model() -> keras.Model:
        built = build_classifier(shape[0], shape[1], len(split.names), p)
        built.compile(optimizer=keras.optimizers.Adam(p.learning_rate), loss="sparse_categorical_crossentropy")
        return built

    return Throughput("classification", _rates(model, {"a": memory, **pipelines}, steps, config, p.batch_size))


def _sync(layout: Layout, params: Params, config: BenchConfig) -> Throughput:
    p = params.train.sync
    split = inputs.open_split(layout.features("sync"), "train", ("frames", "audio"))
    pipelines = {feed: sync_dataset(split, p, _feed(feed, split))[0] for feed in "bcd"}
    steps = max(1, len(split.paths) * p.windows_per_clip // p.batch_size)
    memory = _in_memory(_materialise(pipelines["b"], steps), p.batch_size)  # the same kind of examples, drawn once

    def model() -> keras.Model:
        built = build_sync(split.shapes["frames"][1], split.shapes["audio"][2], p)
        built.compile(
            optimizer=keras.optimizers.Adam(p.learning_rate),
            loss={"offset": "sparse_categorical_crossentropy", "in_sync": "binary_crossentropy"},
        )
        return built

    return Throughput("sync", _rates(model, {"a": memory, **pipelines}, steps, config, p.batch_size))


def _feed(name: str, split: inputs.Split) -> inputs.Feed:
    """b: in memory; c: streamed; d: cached on disk; c and d with a shuffle buffer of FEW clips."""
    return (
        inputs.Feed("memory", len(split.paths), 0)
        if name == "b"
        else inputs.Feed("none" if name == "c" else "disk", FEW, 0)
    )


def _materialise(pipeline: Any, steps: int) -> tuple[dict[str, np.ndarray], ...]:
    """`steps` batches of the pipeline as arrays: (inputs, targets, weights), each a dict by name."""
    batches = list(pipeline.take(steps).as_numpy_iterator())
    return tuple(
        {key: np.concatenate([batch[part][key] for batch in batches]) for key in batches[0][part]} for part in range(3)
    )


def _in_memory(examples: Any, batch_size: int) -> Any:
    """Examples held as tensors, shuffled, batched and prefetched: the anchor's feed."""
    import tensorflow as tf

    memory = tf.data.Dataset.from_tensor_slices(examples)
    return memory.shuffle(1024, seed=0).repeat().batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _rates(
    model: Callable[[], keras.Model], feeds: dict[str, Any], steps: int, config: BenchConfig, batch_size: int
) -> dict[str, float]:
    """Examples a second through `model.fit` from each feed, each with a model of its own."""
    runs = {name: (model(), data) for name, data in feeds.items()}
    for fitted, data in runs.values():
        fitted.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)  # warm-up: tracing, the cache filled
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(3):  # turn about, so that a slow spell of the machine does not fall on one side only
        for name, (fitted, data) in runs.items():
            start = time.perf_counter()
            fitted.fit(data, steps_per_epoch=config.batches, epochs=1, verbose=0)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: config.batches * batch_size / seconds for name, seconds in best.items()}


@dataclass(frozen=True)
class EncoderRun:
    encoder: str
    seconds: float  # the whole training: building, tracing, every epoch, saving
    epochs: int  # early stopping may end it before the epochs asked for
    accuracy: float  # on the test split


def compare_encoders(workdir: Path, config: BenchConfig, encoder: str, epochs: int | None) -> list[EncoderRun]:
    """The classifier trained and scored as the train and evaluate stages do, with `small` (the anchor) and with
    `encoder`."""
    from vidops.components.encoders import SMALL
    from vidops.components.tasks import spec

    layout, _ = prepare(workdir, config, ("classification",))
    classifier, features, runs = spec("classification"), layout.features("classification"), []
    for name in (SMALL, encoder):
        sets = [f"train.classification.encoder={name}", *([f"train.classification.epochs={epochs}"] if epochs else [])]
        p = load_params(None, sets).train.classification
        start = time.perf_counter()
        trained = classifier.train(features, workdir / "models" / name, p)
        seconds = time.perf_counter() - start
        metrics = classifier.evaluate(workdir / "models" / name, features, workdir / "reports" / name, p).metrics
        runs.append(EncoderRun(name, seconds, trained.epochs, metrics["accuracy"]))
    return runs


def encoders_report(runs: list[EncoderRun], config: BenchConfig) -> str:
    anchor = runs[0]
    lines = [
        f"vidops bench train --encoder: the classifier on the demo data ({config.clips_per_class} clips per class), "
        "trained and scored on its test split",
        "",
    ]
    lines.append(f"  {'encoder':<22}{'accuracy':>10}{'epochs':>8}{'seconds':>10}{'time / small':>14}")
    for r in runs:
        lines.append(
            f"  {r.encoder:<22}{r.accuracy:>10.3f}{r.epochs:>8}{r.seconds:>10.1f}{r.seconds / anchor.seconds:>14.2f}"
        )
    return "\n".join(lines)


def report(results: list[Throughput], config: BenchConfig) -> str:
    lines = [
        f"vidops bench train: runs of {config.batches} batches after a warm-up epoch, best of 3; examples per second",
        "",
    ]
    lines.append(
        f"  {'task':<16}{'tensors (a)':>12}{'cached (b)':>12}{'streamed (c)':>14}{'disk (d)':>10}"
        f"{'b/a':>7}{'c/b':>7}{'d/b':>7}"
    )
    for r in results:
        a, b, c, d = (r.rates[feed] for feed in FEEDS)
        lines.append(f"  {r.task:<16}{a:>12.1f}{b:>12.1f}{c:>14.1f}{d:>10.1f}{b / a:>7.2f}{c / b:>7.2f}{d / b:>7.2f}")
    lines.append("  target: c/b and d/b >= 0.9")
    return "\n".join(lines)

"""The stages bound to the project layout: what `vidops stage NAME --task T` (dvc.yaml) and the Prefect flow both run.

Each takes the project layout, its params and the task's name, and hands the component its paths and the task's spec
(components.tasks) what differs between tasks, so a pipeline run through Prefect and one through `dvc repro` read and
write the same files. What each stage reads and leaves is components.dependencies' table; the stage functions here
carry its names (`run(name)`).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import queue
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from vidops.components import (
    catalog,
    cluster,
    dependencies,
    evaluation,
    extraction,
    inputs,
    promotion,
    registry,
    tracking,
    validation,
)
from vidops.components.errors import VidopsError
from vidops.components.io import write_json
from vidops.components.layout import ACCEPTED, CAPTIONS_FILE, DECISION, METRICS, REPORT, RUN_FILE, Layout
from vidops.components.lineage import recorded_tags
from vidops.components.parallel import Mapper, in_threads
from vidops.components.params import Params, Task
from vidops.components.quiet import quiet_libraries
from vidops.components.seal import registry_key
from vidops.components.tasks import TrainedModel, spec
from vidops.components.validation import validation_checks

T = TypeVar("T")
EXPERIMENT = "DVC_EXP_NAME"  # set by `dvc exp run` for the stages it runs
log = logging.getLogger("vidops")  # the flows send it to the Prefect run's logs
Progress = Callable[[int, int], None]  # (done, of)
Lock = Callable[[Layout, str], AbstractContextManager[Any]]  # (layout, model name): held while the gate moves aliases


def validate(layout: Layout, params: Params, task: Task, mapper: Mapper = in_threads) -> validation.ValidationSummary:
    """Catalog and check the task's dataset: the catalog table, quarantine, accepted clips and Data Docs."""
    checks, needs = validation_checks(params, task), spec(task)
    folder = dataset(layout, params, task)
    return validation.validate_dataset(
        folder, layout.catalog(task), checks, layout.data_docs(task), needs.min_classes, mapper, needs.captioned
    )


def extract(
    layout: Layout,
    params: Params,
    task: Task,
    progress: extraction.Progress | None = None,
    mapper: Mapper | None = None,
) -> extraction.FeatureSet:
    """Frames and aligned audio of every accepted clip, one shard a clip, and their index."""
    catalog_dir = layout.catalog(task)
    captions = catalog_dir / CAPTIONS_FILE if spec(task).captioned else None
    return extraction.extract_features(
        dataset(layout, params, task),
        catalog_dir / ACCEPTED,
        layout.features(task),
        params.extract.of(task),
        progress,
        mapper,
        captions,
    )


def train(
    layout: Layout, params: Params, task: Task, progress: Progress | None = None, run_name: str | None = None
) -> TrainedModel:
    """Train the task's model in a process of its own, reporting each epoch live to an MLflow run opened first
    (named `run_name`, default `<task>-<DVC experiment or "stage">`), to the `vidops` log and to `progress`."""
    fit, features = params.train.of(task), layout.features(task)
    extraction.usable_rows(features, "train")  # no features: an error now, before a run is opened for nothing
    spec(task).preflight(task, fit)  # nor weights
    inputs.check_budget(features, spec(task).fields, fit, f"train.{task}")  # nor memory for a batch
    if (me := cluster.worker()) and not me.chief:
        # one of several workers training the chief's model with it (TF_CONFIG): its copy beside the chief's, no MLflow
        # run
        log.info("train %s: worker %d of %d, beside the chief", task, me.index, me.workers)
        return _train_reporting(spec(task).train, features, worker_copy(layout, task, me), fit, None, task, progress)
    name = run_name or f"{task}-{os.environ.get(EXPERIMENT) or 'stage'}"
    store = tracking.locate(layout)
    if abandoned := tracking.end_abandoned_run(layout.models(task), store):
        log.info("train %s: MLflow run %s of a training that did not finish (killed) ended as KILLED", task, abandoned)
    tags = lineage_tags(layout, params, task)
    run = tracking.open_training_run(
        store, params, task, name, tags, dataset(layout, params, task), layout.catalog(task) / ACCEPTED
    )
    write_json(layout.models(task) / RUN_FILE, asdict(run))
    log.info("train %s: MLflow run %s (%s)", task, name, run.run_id)
    try:
        trained = _train_reporting(spec(task).train, features, layout.models(task), fit, run, task, progress)
    except BaseException:
        _end(run, task, failed=True)
        raise
    _end(run, task)
    from vidops.components.training import write_curves  # TensorFlow's import: only where a model is trained

    write_curves(trained.history, layout.curves(task))
    return trained


def _end(run: tracking.TrainingRun, task: Task, failed: bool = False) -> None:
    """End the training's MLflow run; a tracking server that does not answer costs a warning, not the trained model (the
    registration logs into the run again, and ends it)."""
    try:
        run.end(failed)
    except Exception as exc:
        log.warning(
            "train %s: MLflow run %s could not be ended %s: %s",
            task,
            run.run_id,
            "FAILED" if failed else "FINISHED",
            exc,
        )


@dataclass(frozen=True)
class _EpochReport:
    """The training process's EpochHook: the epoch's metrics to the MLflow run (if any), and to the parent through
    `queue`."""

    run: tracking.TrainingRun | None
    queue: Any

    def __call__(self, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        try:
            if self.run:
                self.run.log_epoch(epoch, epochs, metrics)
        except Exception as exc:
            # a tracking server's hiccup must not cost the training; registration logs the curves again
            metrics = {**metrics, "not_logged": f"MLflow: {exc}"}
        self.queue.put((epoch, epochs, metrics))


def _train_reporting(
    train: Callable[..., T],
    features: Path,
    models: Path,
    params: Any,
    run: tracking.TrainingRun | None,
    task: Task,
    progress: Progress | None,
) -> T:
    """`train` in a fresh (spawned) process (TensorFlow keeps a GPU's memory until its process exits), its epochs
    logged here as they end."""
    spawn = multiprocessing.get_context("spawn")
    # the initializer runs before `train` is unpickled, so TensorFlow loads as quietly there as here
    with (
        spawn.Manager() as manager,
        ProcessPoolExecutor(max_workers=1, mp_context=spawn, initializer=quiet_libraries) as pool,
    ):
        epochs = manager.Queue()
        future = pool.submit(train, features, models, params, _EpochReport(run, epochs))
        while not _drain(epochs, future, task, progress):
            pass
        return future.result()


def worker_copy(layout: Layout, task: Task, me: cluster.Worker) -> Path:
    """Where a worker other than the chief keeps its copy of the model: beside the chief's, outside the stage's
    output."""
    return layout.models(task).with_name(f"{task}.worker-{me.index}")


def _drain(epochs: Any, future: Future, task: Task, progress: Progress | None) -> bool:
    """Log the epochs reported so far; True once the training is over and every report is read."""
    done = future.done()  # read first: a report put before the end is then still read below
    while True:
        try:
            epoch, total, metrics = epochs.get(timeout=0 if done else 0.5)
        except queue.Empty:
            return done
        shown = " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        log.info("train %s: epoch %d/%d %s", task, epoch + 1, total, shown)
        if progress:
            progress(epoch + 1, total)


def evaluate(layout: Layout, params: Params, task: Task) -> evaluation.Evaluation:
    """The task's evaluation of the trained model on the held-out clips: reports/<task>/metrics.json and the rest."""
    return spec(task).evaluate(layout.models(task), layout.features(task), layout.reports(task), params.train.of(task))


def register(layout: Layout, params: Params, task: Task, tags: dict[str, str] | None = None) -> registry.Registration:
    """Log the model to its training's MLflow run and register it as the challenger (a DVC experiment only logs it,
    unless registry.register_experiments)."""
    registered = registry.register_model(
        layout.models(task),
        layout.features(task),
        dataset(layout, params, task),
        layout.reports(task) / METRICS,
        layout.catalog(task) / REPORT,
        params,
        task,
        tracking.locate(layout),
        {**lineage_tags(layout, params, task), **(tags or {})},
        register=not unregistered_experiment(params),
        registry_key=registry_key(layout),
    )
    write_json(layout.registration(task), asdict(registered))
    return registered


def promote(
    layout: Layout, params: Params, task: Task, version: str | None = None, lock: Lock | None = None
) -> promotion.Decision:
    """The gate: score `version` (default: the challenger) and the champion on this project's test clips and crown the
    better one, holding the model's `lock` (the profile's; the embedded store's file lock by default); the scores and
    decision go to reports/<task>/promotion/."""
    rule, store = params.registry.of(task), tracking.locate(layout)
    if lock is None:
        if not store.uri.startswith("sqlite:"):  # other machines reach this store: a file lock here would not stop them
            raise VidopsError(
                f"the registry at {store.uri} is shared: the gate needs the stack's lock (vidops.stack.profiles)"
            )
        lock = promotion.file_lock
    test = promotion.TestSet(
        dataset(layout, params, task), layout.catalog(task) / ACCEPTED, layout.features(task), params.extract.of(task)
    )
    reports = layout.promotion(task)
    with lock(layout, rule.model_name):
        shutil.rmtree(reports, ignore_errors=True)  # this decision's scores only
        if unregistered_experiment(params):
            why = (
                f"DVC experiment {os.environ[EXPERIMENT]}: not registered (registry.register_experiments is false), "
                "so not gated"
            )
            skipped = promotion.Decision(rule.model_name, "", False, "not gated", why, rule.metric, None)
            write_json(reports / DECISION, asdict(skipped))
            return skipped
        return promotion.gate(
            store, rule.model_name, version, rule, params.registry.min_improvement, test, reports, registry_key(layout)
        )


STAGES = {name: getattr(sys.modules[__name__], name) for name in dependencies.NAMES}  # the stage functions, by name


def unregistered_experiment(params: Params) -> bool:
    """Whether this is a `dvc exp run` whose models stay out of the registry (registry.register_experiments)."""
    return bool(os.environ.get(EXPERIMENT)) and not params.registry.register_experiments


def dataset(layout: Layout, params: Params, task: Task) -> Path:
    """The task's dataset folder (its clips as <label>/<clip>, or listed by its manifest.csv: catalog.dataset_manifest);
    an error naming it and the param when it is not there."""
    folder = layout.raw(params.datasets.of(task))
    if folder.is_file() and folder.suffix.lower() == ".csv":
        # DVC versions data/raw/<name> as one unit, and a lone CSV would leave its clips out of every version
        raise VidopsError(
            f"{folder}: datasets.{task} in params.yaml names a CSV; a dataset is a folder: put the CSV and its clips "
            f"in data/raw/<name>/, the CSV as <name>/{catalog.DATASET_MANIFEST} with paths relative to it, and set "
            f"datasets.{task}: <name>"
        )
    if not folder.is_dir():
        raise VidopsError(
            f"{folder}: no such dataset (datasets.{task} in params.yaml); add it, or leave {task} out of tasks"
        )
    return folder


def lineage_tags(layout: Layout, params: Params, task: Task) -> dict[str, str]:
    """What a training and its registered version record of where the model came from (components.lineage), the
    params hashed being every param the task's stages read."""
    keys = tuple(sorted({key for stage in dependencies.STAGES for key in stage.params}))
    read = dependencies.param_values(params, keys, task)
    return recorded_tags(task, layout.root, dataset(layout, params, task), layout.catalog(task) / ACCEPTED, read)


def summary(result: object, root: Path, metric: str) -> str:
    """One line of what a stage did and where its main output is; an evaluation is told by `metric` (the gate's)."""

    def at(path: Path) -> str:
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    match result:
        case validation.ValidationSummary() as s:
            return (
                f"{s.clips} clips, {s.accepted} accepted ({s.warned} with warnings), {s.quarantined} quarantined; "
                f"{at(s.quarantine)}"
            )
        case extraction.FeatureSet() as f:
            splits = ", ".join(f"{n} {split}" for split, n in sorted(f.clips.items(), reverse=True))
            return (
                f"{sum(f.clips.values())} clips of {len(f.labels)} classes ({splits}): {f.extracted} extracted, "
                f"{f.reused} reused, {f.failed} failed; {at(f.root)}"
            )
        case TrainedModel() as t:
            shown = sorted(
                (k for k, v in t.history.items() if v and (k == "loss" or k.endswith("accuracy"))),
                key=lambda k: (k != "loss", k),
            )
            resumed = f" (resumed at epoch {t.resumed_from})" if t.resumed_from else ""
            return (
                f"{t.epochs} epochs{resumed}, final "
                + ", ".join(f"{k} {t.history[k][-1]:.3f}" for k in shown)
                + f"; {at(t.path)}"
            )
        case evaluation.Evaluation() as e:
            return f"{metric} {e.metrics[metric]:.3f} on {e.metrics['test_clips']} test clips; {at(e.metrics_path)}"
        case registry.Registration(version=None) as r:
            return (
                f"{r.model_name} logged to MLflow run {r.run_id}, not registered (a DVC experiment; "
                "registry.register_experiments)"
            )
        case registry.Registration() as r:
            return f"{r.model_name} version {r.version}, MLflow run {r.run_id}"
        case promotion.Decision() as d:
            return f"{d.model_name} version {d.version}: {d.decision}: {d.reason}"
    return str(result)


def outputs_present(name: str, layout: Layout, task: Task) -> bool:
    """Whether the files the stage leaves are all there, and for registration the version it made is in the registry
    still (a cached result without them is worth nothing: after the store is reset, every later run would fail)."""
    if not all(output.present(layout, task) for output in dependencies.stage(name).leaves):
        return False
    if name != "register":
        return True
    recorded = json.loads(layout.registration(task).read_text())
    return recorded["version"] is None or registry.has_version(
        tracking.locate(layout), recorded["model_name"], recorded["version"]
    )


def fingerprint(name: str, layout: Layout, params: Params, task: Task) -> str:
    """The Prefect cache key of the stage for the task: `dependencies.fingerprint` against this project's MLflow
    store."""
    return dependencies.fingerprint(name, layout, params, task, tracking.locate(layout).uri)

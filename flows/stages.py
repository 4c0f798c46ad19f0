"""The stages wired to the project layout: what `vidops stage NAME --task T` (dvc.yaml) and the Prefect tasks both run.

Each takes the project layout, its params and the task's name and hands the component its
paths, and the task's spec (components.tasks) what differs between tasks, so a pipeline run
through Prefect and one through `dvc repro` read and write the same files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import queue
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from vidops.components import catalog, cluster, encoders, evaluation, extraction, inputs, promotion, registry, validation, versioning
from vidops.components.errors import VidopsError
from vidops.components.io import write_json
from vidops.components.layout import CAPTIONS_FILE, INDEX_TABLE, RUN_FILE, Layout
from vidops.components.parallel import Mapper, in_threads
from vidops.components.params import Params, Task
from vidops.components.tasks import TrainedModel, spec
from vidops.components.validation import validation_checks
from vidops.flows.profiles import quiet_libraries, registry_key, registry_lock, tracking

T = TypeVar("T")
EXPERIMENT = "DVC_EXP_NAME"  # set by `dvc exp run` for the stages it runs
log = logging.getLogger("vidops")  # the flows send it to the Prefect run's logs
Progress = Callable[[int, int], None]  # (done, of)


def validate_dataset(layout: Layout, params: Params, task: Task, mapper: Mapper = in_threads) -> validation.ValidationSummary:
    checks, needs = validation_checks(params, task), spec(task)
    return validation.validate_dataset(
        dataset(layout, params, task), layout.catalog(task), checks, layout.data_docs(task), needs.min_classes, mapper, needs.captioned
    )  # fmt: skip


def extract_features(
    layout: Layout, params: Params, task: Task, progress: extraction.Progress | None = None, mapper: Mapper | None = None
) -> extraction.FeatureSet:
    accepted, captions = layout.catalog(task) / validation.ACCEPTED, layout.catalog(task) / CAPTIONS_FILE
    return extraction.extract_features(
        dataset(layout, params, task), accepted, layout.features(task), params.extract.of(task), progress, mapper,
        captions if spec(task).captioned else None,
    )  # fmt: skip


def train_model(layout: Layout, params: Params, task: Task, progress: Progress | None = None, run_name: str | None = None) -> TrainedModel:
    """Train the task's model in a process of its own, reporting each epoch live to an MLflow run opened first
    (named `run_name`, default `<task>-<DVC experiment or "stage">`), to the `vidops` log and to `progress`."""
    extraction.usable_rows(layout.features(task), "train")  # no features: an error now, before a run is opened for nothing
    spec(task).preflight(task, params.train.of(task))  # nor weights
    inputs.check_budget(layout.features(task), spec(task).fields, params.train.of(task), f"train.{task}")  # nor memory for a batch
    if (me := cluster.worker()) and not me.chief:
        # one of several workers training the chief's model with it (TF_CONFIG): its copy beside the chief's, no MLflow run
        log.info("train %s: worker %d of %d, beside the chief", task, me.index, me.workers)
        return _train_reporting(spec(task).train, layout.features(task), worker_copy(layout, task, me), params.train.of(task), None, task, progress)
    name = run_name or f"{task}-{os.environ.get(EXPERIMENT) or 'stage'}"
    accepted = layout.catalog(task) / validation.ACCEPTED
    if abandoned := registry.end_abandoned_run(layout.models(task), tracking(layout)):
        log.info("train %s: MLflow run %s of a training that did not finish (killed) ended as KILLED", task, abandoned)
    run = registry.open_training_run(tracking(layout), params, task, name, _lineage(layout, params, task), dataset(layout, params, task), accepted)
    write_json(layout.models(task) / RUN_FILE, asdict(run))
    log.info("train %s: MLflow run %s (%s)", task, name, run.run_id)
    try:
        trained = _train_reporting(spec(task).train, layout.features(task), layout.models(task), params.train.of(task), run, task, progress)
    except BaseException:
        _end(run, task, failed=True)
        raise
    _end(run, task)
    from vidops.components.training import write_curves  # TensorFlow's import: only where a model is trained

    write_curves(trained.history, layout.curves(task))
    return trained


def _end(run: registry.TrainingRun, task: Task, failed: bool = False) -> None:
    """End the training's MLflow run; a tracking server that does not answer costs a warning, not the trained model (the
    registration logs into the run again, and ends it)."""
    try:
        run.end(failed)
    except Exception as exc:
        log.warning("train %s: MLflow run %s could not be ended %s: %s", task, run.run_id, "FAILED" if failed else "FINISHED", exc)


@dataclass(frozen=True)
class _EpochReport:
    """The training process's EpochHook: the epoch's metrics to the MLflow run (if any), and to the parent through `queue`."""

    run: registry.TrainingRun | None
    queue: Any

    def __call__(self, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        try:
            if self.run:
                self.run.log_epoch(epoch, epochs, metrics)
        except Exception as exc:  # a tracking server's hiccup must not cost the training; registration logs the curves again
            metrics = {**metrics, "not_logged": f"MLflow: {exc}"}
        self.queue.put((epoch, epochs, metrics))


def _train_reporting(train: Callable[..., T], features: Path, models: Path, params: Any, run: registry.TrainingRun | None, task: Task, progress: Progress | None) -> T:
    """`train` in a fresh (spawned) process (TensorFlow keeps a GPU's memory until its process exits), its epochs
    logged here as they end."""
    spawn = multiprocessing.get_context("spawn")
    # the initializer runs before `train` is unpickled, so TensorFlow loads as quietly there as here
    with spawn.Manager() as manager, ProcessPoolExecutor(max_workers=1, mp_context=spawn, initializer=quiet_libraries) as pool:
        epochs = manager.Queue()
        future = pool.submit(train, features, models, params, _EpochReport(run, epochs))
        while not _drain(epochs, future, task, progress):
            pass
        return future.result()


def worker_copy(layout: Layout, task: Task, me: cluster.Worker) -> Path:
    """Where a worker other than the chief keeps its copy of the model: beside the chief's, outside the stage's output."""
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


def evaluate_model(layout: Layout, params: Params, task: Task) -> evaluation.Evaluation:
    return spec(task).evaluate(layout.models(task), layout.features(task), layout.reports(task), params.train.of(task))


def register_model(layout: Layout, params: Params, task: Task, tags: dict[str, str] | None = None) -> registry.Registration:
    """Log the model to its training's MLflow run and register it as the challenger (a DVC experiment only logs it,
    unless registry.register_experiments)."""
    metrics = layout.reports(task) / evaluation.METRICS
    lineage = {**_lineage(layout, params, task), **(tags or {})}
    report = layout.catalog(task) / validation.REPORT
    registered = registry.register_model(
        layout.models(task), layout.features(task), dataset(layout, params, task), metrics, report, params, task, tracking(layout), lineage,
        register=not unregistered_experiment(params), registry_key=registry_key(layout),
    )  # fmt: skip
    write_json(layout.registration(task), asdict(registered))
    return registered


def promote_model(layout: Layout, params: Params, task: Task, version: str | None = None) -> promotion.Decision:
    """The gate: score `version` (default: the challenger) and the champion on this project's test clips and
    crown the better one; the scores and decision go to reports/<task>/promotion/."""
    rule, name = params.registry.of(task), params.registry.of(task).model_name
    test = promotion.TestSet(dataset(layout, params, task), layout.catalog(task) / validation.ACCEPTED, layout.features(task), params.extract.of(task))
    reports = layout.promotion(task)
    with registry_lock(layout, name):
        shutil.rmtree(reports, ignore_errors=True)  # this decision's scores only
        if unregistered_experiment(params):
            why = f"DVC experiment {os.environ[EXPERIMENT]}: not registered (registry.register_experiments is false), so not gated"
            skipped = promotion.Decision(name, "", False, "not gated", why, rule.metric, None)
            write_json(reports / promotion.DECISION, asdict(skipped))
            return skipped
        return promotion.gate(tracking(layout), name, version, rule, params.registry.min_improvement, test, reports, registry_key(layout))


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
            f"{folder}: datasets.{task} in params.yaml names a CSV; a dataset is a folder: put the CSV and its clips in "
            f"data/raw/<name>/, the CSV as <name>/{catalog.DATASET_MANIFEST} with paths relative to it, and set datasets.{task}: <name>"
        )
    if not folder.is_dir():
        raise VidopsError(f"{folder}: no such dataset (datasets.{task} in params.yaml); add it, or leave {task} out of tasks")
    return folder


def _lineage(layout: Layout, params: Params, task: Task) -> dict[str, str]:
    """Where the model came from: the dataset folder and its DVC version (the hash `dvc add` would pin for it as it is
    now), the hash of the accepted manifest, the hash of every param the task's stages read, the git commit."""
    folder, accepted = dataset(layout, params, task), layout.catalog(task) / validation.ACCEPTED
    read = param_values(params, tuple(sorted({key for d in DEPENDS.values() for key in d.params})), task)
    tags = {
        "vidops.task": task,
        "vidops.dataset": str(folder.relative_to(layout.root)) if folder.is_relative_to(layout.root) else str(folder),
        "vidops.dataset_version": versioning.current_version(layout.root, folder),
        "vidops.manifest_sha256": hashlib.sha256(accepted.read_bytes()).hexdigest(),
        "vidops.params_sha256": hashlib.sha256(json.dumps(read, sort_keys=True).encode()).hexdigest(),
    }
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=layout.root, capture_output=True, text=True)
    if commit.returncode == 0:  # a project outside git has no commit to record
        tags["mlflow.source.git.commit"] = commit.stdout.strip()
    return tags


def summary(result: object, root: Path, metric: str) -> str:
    """One line of what a stage did and where its main output is; an evaluation is told by `metric` (the gate's)."""

    def at(path: Path) -> str:
        return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)

    match result:
        case validation.ValidationSummary() as s:
            return f"{s.clips} clips, {s.accepted} accepted ({s.warned} with warnings), {s.quarantined} quarantined; {at(s.quarantine)}"
        case extraction.FeatureSet() as f:
            splits = ", ".join(f"{n} {split}" for split, n in sorted(f.clips.items(), reverse=True))
            return f"{sum(f.clips.values())} clips of {len(f.labels)} classes ({splits}): {f.extracted} extracted, {f.reused} reused, {f.failed} failed; {at(f.root)}"
        case TrainedModel() as t:
            shown = sorted((k for k, v in t.history.items() if v and (k == "loss" or k.endswith("accuracy"))), key=lambda k: (k != "loss", k))
            resumed = f" (resumed at epoch {t.resumed_from})" if t.resumed_from else ""
            return f"{t.epochs} epochs{resumed}, final " + ", ".join(f"{k} {t.history[k][-1]:.3f}" for k in shown) + f"; {at(t.path)}"
        case evaluation.Evaluation() as e:
            return f"{metric} {e.metrics[metric]:.3f} on {e.metrics['test_clips']} test clips; {at(e.metrics_path)}"
        case registry.Registration(version=None) as r:
            return f"{r.model_name} logged to MLflow run {r.run_id}, not registered (a DVC experiment; registry.register_experiments)"
        case registry.Registration() as r:
            return f"{r.model_name} version {r.version}, MLflow run {r.run_id}"
        case promotion.Decision() as d:
            return f"{d.model_name} version {d.version}: {d.decision}: {d.reason}"
    return str(result)


STAGES = {
    "validate": validate_dataset,
    "extract": extract_features,
    "train": train_model,
    "evaluate": evaluate_model,
    "register": register_model,
    "promote": promote_model,
}


@dataclass(frozen=True)
class Depends:
    """What a stage's result depends on, for caching it: component modules, params keys, input files; and the files it leaves.

    dvc.yaml lists the same component modules and params keys for each stage (tests/test_project_files.py holds them together).
    Its inputs are DVC's deps too, but for the encoder's weights file, whose path is a param that may name no file.
    """

    code: tuple[str, ...]  # modules under components/; SPEC_CODE is the task's spec module
    params: tuple[str, ...]  # dotted keys of params.yaml; {task} stands for the task
    inputs: Callable[[Layout, Params, Task], list[Path]]
    outputs: Callable[[Layout, Task], list[Path]]


SPEC_CODE = "tasks/{task}"  # the task's spec module (components/tasks/<task>.py for a built-in task)

# the features' index.csv stands for the features: each clip's split, label and shard; a shard is named by its content and params.
# The catalog's captions file is written for every task (no rows for one without captions), so DVC's extract can depend on it.
DEPENDS = {
    "validate": Depends(("catalog", "validation", "text", SPEC_CODE), ("datasets.{task}", "validation"), lambda L, p, t: [dataset(L, p, t)],
                        lambda L, t: [L.catalog(t) / validation.ACCEPTED, L.catalog(t) / CAPTIONS_FILE, L.catalog(t) / validation.REPORT]),
    "extract": Depends(("extraction", "media", "audio", "sampling"), ("datasets.{task}", "extract.{task}"),
                       lambda L, p, t: [L.catalog(t) / validation.ACCEPTED, L.catalog(t) / CAPTIONS_FILE],
                       lambda L, t: [L.index(t), *_captions(L, t)]),
    "train": Depends(("inputs", "models", "encoders", "training", "text", SPEC_CODE), ("train.{task}",),
                     lambda L, p, t: [L.index(t), *_captions(L, t), *filter(None, [encoders.weights_file(p.train.of(t))])],
                     lambda L, t: [L.model(t), L.curves(t)]),
    "evaluate": Depends(("inputs", "models", "evaluation", "text", "decoding", "generate", SPEC_CODE), ("train.{task}",),
                        lambda L, p, t: [L.model(t), L.index(t), *_captions(L, t)], lambda L, t: [L.reports(t) / evaluation.METRICS]),
    "register": Depends(("registry", "serving", "served_model", SPEC_CODE), ("registry", "datasets.{task}", "extract.{task}", "train.{task}"),
                        lambda L, p, t: [L.models(t), L.reports(t) / evaluation.METRICS, L.catalog(t) / validation.ACCEPTED],
                        lambda L, t: [L.registration(t)]),
}  # fmt: skip


def _captions(layout: Layout, task: Task) -> list[Path]:
    """The features' captions of a captioned task (the index stands for the clips, not for what they say)."""
    return [layout.features(task) / CAPTIONS_FILE] if spec(task).captioned else []


def param_values(params: Params, keys: tuple[str, ...], task: Task) -> dict[str, Any]:
    """The values of dotted params keys (`train.{task}`), by key."""
    tree, found = params.to_yaml_dict(), {}
    for key in keys:
        node = tree
        for part in key.format(task=task).split("."):
            node = node[part]
        found[key.format(task=task)] = node
    return found


def fingerprint(stage: str, layout: Layout, params: Params, task: Task) -> str:
    """A hash of everything the stage's result depends on: its code, its params, the content of its input files
    (for a folder: each file's path, size and modification time, as DVC does for large data), and the MLflow store."""
    depends = DEPENDS[stage]
    digest = hashlib.sha256(f"{stage}:{task}:{tracking(layout).uri}".encode())
    for name in depends.code:
        digest.update(_code_file(name, task).read_bytes())
    digest.update(json.dumps(param_values(params, depends.params, task), sort_keys=True).encode())
    for path in depends.inputs(layout, params, task):
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                stat = file.stat()
                digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        elif path.name == INDEX_TABLE:  # what the clips are, not how this run got them (reused or extracted afresh)
            index = pd.read_csv(path, keep_default_na=False)
            digest.update(index[["path", "label", "split", "shard", "status"]].to_csv(index=False).encode())
        elif path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        else:
            digest.update(f"missing:{path}".encode())
    return digest.hexdigest()


def _code_file(module: str, task: Task) -> Path:
    """The file of a module in a stage's `code`; SPEC_CODE is the task's spec, wherever the task is defined."""
    return spec(task).source if module == SPEC_CODE else Path(extraction.__file__).parent / f"{module}.py"


def outputs_present(stage: str, layout: Layout, task: Task) -> bool:
    """Whether the files the stage leaves are all there, and for registration the version it made is in the registry
    still (a cached result without them is worth nothing: a reset store once failed every later run)."""
    if not all(path.exists() for path in DEPENDS[stage].outputs(layout, task)):
        return False
    if stage != "register":
        return True
    recorded = json.loads(layout.registration(task).read_text())
    return recorded["version"] is None or registry.has_version(tracking(layout), recorded["model_name"], recorded["version"])

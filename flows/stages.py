"""The stages wired to the project layout: what `vidops stage NAME --task T` (dvc.yaml) and the Prefect tasks both run.

Each takes the project layout, its params and the task (classification or sync) and hands
the component its paths, so a pipeline run through Prefect and one through `dvc repro`
read and write the same files.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from components import evaluation, extraction, promotion, registry, training, validation
from components.errors import VidopsError
from components.io import write_json
from components.layout import Layout
from components.parallel import Mapper, in_processes, in_threads
from components.params import Params, Task
from flows.profiles import registry_lock, tracking

T = TypeVar("T")


def validate_dataset(layout: Layout, params: Params, task: Task, mapper: Mapper = in_threads) -> validation.ValidationSummary:
    # the sync model learns from sound, not labels: a clip without sound is of no use, one class is enough
    checks = params.validation.model_copy(update={"require_audio": True}) if task == "sync" else params.validation
    classes = 1 if task == "sync" else 2
    return validation.validate_dataset(dataset(layout, params, task), layout.catalog(task), checks, layout.data_docs(task), classes, mapper)


def extract_features(
    layout: Layout, params: Params, task: Task, progress: extraction.Progress | None = None, mapper: Mapper = in_processes
) -> extraction.FeatureSet:
    accepted = layout.catalog(task) / validation.ACCEPTED
    return extraction.extract_features(dataset(layout, params, task), accepted, layout.features(task), params.extract.of(task), progress, mapper)


def train_model(layout: Layout, params: Params, task: Task) -> training.TrainedModel:
    train = training.train_classifier if task == "classification" else training.train_sync
    # TensorFlow keeps a GPU's memory until its process exits: each training gets a process of its own
    return in_own_process(train, layout.features(task), layout.models(task), params.train.of(task))


def evaluate_model(layout: Layout, params: Params, task: Task) -> evaluation.Evaluation:
    if task == "classification":
        return evaluation.evaluate_classifier(layout.models(task), layout.features(task), layout.reports(task))
    return evaluation.evaluate_sync(layout.models(task), layout.features(task), layout.reports(task), params.train.sync.window)


def register_model(layout: Layout, params: Params, task: Task, tags: dict[str, str] | None = None) -> registry.Registration:
    metrics = layout.reports(task) / evaluation.METRICS
    lineage = {**_lineage(layout, params, task), **(tags or {})}
    report = layout.catalog(task) / validation.REPORT
    registered = registry.register_model(
        layout.models(task), layout.features(task), dataset(layout, params, task), metrics, report, params, task, tracking(layout), lineage
    )
    write_json(layout.reports(task) / "registration.json", asdict(registered))
    return registered


def promote_model(layout: Layout, params: Params, task: Task, version: str | None = None) -> promotion.Decision:
    """The gate: score `version` (default: the challenger) and the champion on this project's test clips and
    crown the better one; the scores and decision go to reports/<task>/promotion/."""
    rule, name = params.registry.of(task), params.registry.of(task).model_name
    test = promotion.TestSet(dataset(layout, params, task), layout.catalog(task) / validation.ACCEPTED, layout.features(task), params.extract.of(task))
    reports = layout.reports(task) / "promotion"
    with registry_lock(layout, name):
        shutil.rmtree(reports, ignore_errors=True)  # this decision's scores only
        return promotion.gate(tracking(layout), name, version, rule, params.registry.min_improvement, test, reports)


def dataset(layout: Layout, params: Params, task: Task) -> Path:
    """The task's dataset folder; an error naming it and the param when it is not there."""
    folder = layout.raw(params.datasets.of(task))
    if not folder.is_dir():
        raise VidopsError(f"{folder}: no such dataset (datasets.{task} in params.yaml); add it, or leave {task} out of tasks")
    return folder


def _lineage(layout: Layout, params: Params, task: Task) -> dict[str, str]:
    """Where the model came from: the dataset folder, the hash of the accepted manifest, the git commit."""
    accepted = layout.catalog(task) / validation.ACCEPTED
    tags = {"vidops.task": task, "vidops.dataset": str(dataset(layout, params, task)), "vidops.manifest_sha256": hashlib.sha256(accepted.read_bytes()).hexdigest()}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=layout.root, capture_output=True, text=True)
    if commit.returncode == 0:  # a project outside git has no commit to record
        tags["mlflow.source.git.commit"] = commit.stdout.strip()
    return tags


def in_own_process(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` in a fresh (spawned) process; its result or its exception comes back."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


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
    """What a stage's result depends on, for caching it: component modules, params, input files; and the files it leaves.

    dvc.yaml lists the same component modules as each stage's code deps (tests/test_project_files.py holds them together).
    """

    code: tuple[str, ...]
    params: Callable[[Params, Task], list[Any]]
    inputs: Callable[[Layout, Params, Task], list[Path]]
    outputs: Callable[[Layout, Task], list[Path]]


def _features(layout: Layout, task: Task) -> list[Path]:
    return [layout.features(task) / "index.csv"]  # each clip's split, label and shard; a shard is named by its content and params


DEPENDS = {
    "validate": Depends(("catalog", "validation"), lambda p, t: [p.datasets.of(t), p.validation],
                        lambda L, p, t: [dataset(L, p, t)], lambda L, t: [L.catalog(t) / validation.ACCEPTED, L.catalog(t) / validation.REPORT]),
    "extract": Depends(("extraction", "media", "audio", "sampling"), lambda p, t: [p.extract.of(t)],
                       lambda L, p, t: [L.catalog(t) / validation.ACCEPTED], _features),
    "train": Depends(("inputs", "models", "training"), lambda p, t: [p.train.of(t)], lambda L, p, t: _features(L, t),
                     lambda L, t: [L.models(t) / "model.keras"]),
    "evaluate": Depends(("inputs", "models", "evaluation"), lambda p, t: [p.train.of(t)], lambda L, p, t: [L.models(t) / "model.keras", *_features(L, t)],
                        lambda L, t: [L.reports(t) / evaluation.METRICS]),
    "register": Depends(("registry", "serving"), lambda p, t: [p.registry, p.datasets.of(t), p.extract.of(t), p.train.of(t)],
                        lambda L, p, t: [L.models(t), L.reports(t) / evaluation.METRICS, L.catalog(t) / validation.ACCEPTED],
                        lambda L, t: [L.reports(t) / "registration.json"]),
}  # fmt: skip


def fingerprint(stage: str, layout: Layout, params: Params, task: Task) -> str:
    """A hash of everything the stage's result depends on: its code, its params, the content of its input files
    (for a folder: each file's path, size and modification time, as DVC does for large data), and the MLflow store."""
    depends = DEPENDS[stage]
    digest = hashlib.sha256(f"{stage}:{task}:{tracking(layout).uri}".encode())
    for name in depends.code:
        digest.update((Path(extraction.__file__).parent / f"{name}.py").read_bytes())
    for value in depends.params(params, task):
        digest.update(json.dumps(value.model_dump(mode="json") if hasattr(value, "model_dump") else value, sort_keys=True).encode())
    for path in depends.inputs(layout, params, task):
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                stat = file.stat()
                digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        elif path.name == "index.csv":  # what the clips are, not how this run got them (reused or extracted afresh)
            index = pd.read_csv(path, keep_default_na=False)
            digest.update(index[["path", "label", "split", "shard", "status"]].to_csv(index=False).encode())
        elif path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        else:
            digest.update(f"missing:{path}".encode())
    return digest.hexdigest()


def outputs_present(stage: str, layout: Layout, task: Task) -> bool:
    """Whether the files the stage leaves are all there (a cached result without them is worth nothing)."""
    return all(path.exists() for path in DEPENDS[stage].outputs(layout, task))

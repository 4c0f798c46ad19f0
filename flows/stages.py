"""The stages wired to the project layout: what `vidops stage NAME` (dvc.yaml) and the Prefect tasks both run.

Each takes the project layout and its params and hands the component its paths, so a
pipeline run through Prefect and one through `dvc repro` read and write the same files.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import subprocess
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from typing import Any, TypeVar

from components import evaluation, extraction, registry, training, validation
from components.io import write_json
from components.layout import Layout
from components.params import Params
from flows.profiles import tracking

TASK = "classification"
T = TypeVar("T")


def validate_dataset(layout: Layout, params: Params) -> validation.ValidationSummary:
    dataset = layout.raw(params.dataset.name)
    return validation.validate_dataset(dataset, layout.catalog, params.validation, params.dataset.test_fraction, layout.data_docs)


def extract_features(layout: Layout, params: Params, progress: extraction.Progress | None = None) -> extraction.FeatureSet:
    accepted = layout.catalog / validation.ACCEPTED
    return extraction.extract_features(layout.raw(params.dataset.name), accepted, layout.features(TASK), params.extract, progress)


def train_classifier(layout: Layout, params: Params) -> training.TrainedModel:
    # TensorFlow keeps a GPU's memory until its process exits: each training gets a process of its own
    return in_own_process(training.train_classifier, layout.features(TASK), layout.models(TASK), params.train.classifier)


def evaluate_classifier(layout: Layout, params: Params) -> evaluation.Evaluation:
    return evaluation.evaluate_classifier(layout.models(TASK), layout.features(TASK), layout.reports(TASK))


def register_model(layout: Layout, params: Params, tags: dict[str, str] | None = None) -> registry.Registration:
    metrics = layout.reports(TASK) / evaluation.METRICS
    lineage = {**_lineage(layout, params), **(tags or {})}
    report = layout.catalog / validation.REPORT
    registered = registry.register_model(layout.models(TASK), metrics, report, params, tracking(layout), lineage)
    write_json(layout.reports(TASK) / "registration.json", asdict(registered))
    return registered


def _lineage(layout: Layout, params: Params) -> dict[str, str]:
    """Where the model came from: the dataset folder, the hash of the accepted manifest, the git commit."""
    accepted = layout.catalog / validation.ACCEPTED
    tags = {"vidops.dataset": str(layout.raw(params.dataset.name)), "vidops.manifest_sha256": hashlib.sha256(accepted.read_bytes()).hexdigest()}
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
    "train": train_classifier,
    "evaluate": evaluate_classifier,
    "register": register_model,
}

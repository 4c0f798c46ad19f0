"""Shared fixtures: one tiny generated dataset per session, a project laid out around it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from vidops.components.generate import generate_dataset
from vidops.components.layout import Layout
from vidops.components.params import Params, load_params

# The files whose tests take longest (CI, 2026-12-01: 590 to 190 s each), first: `--dist loadfile` hands a worker the
# next file in collection order as it finishes one, so a long file collected last (test_versioning.py, alphabetically)
# kept one worker busy for minutes after the others ran out of work.
LONGEST_FIRST = (
    "test_versioning.py",
    "test_project_s3.py",
    "test_stack.py",
    "test_cli.py",
    "test_demo.py",
    "test_production.py",
    "test_promotion.py",
    "test_serving.py",
    "test_encoders.py",
    "test_pipeline.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's tests keep their order


# Small enough to train in seconds; the demo-sized run lives in test_demo.py.
TINY = [
    "generate.classification.clips_per_class=3",
    "generate.classification.duration_s=1.0",
    "generate.classification.size=48",
    "extract.classification.frames=4",
    "extract.classification.size=32",
    "train.classification.filters=[4, 8]",
    "train.classification.epochs=2",
    "train.classification.batch_size=4",
    "generate.sync.clips_per_class=4",
    "generate.sync.duration_s=1.0",
    "generate.sync.size=48",
    "extract.sync.frames=20",
    "extract.sync.size=16",
    "train.sync.window=4",
    "train.sync.max_offset=3",
    "train.sync.filters=[4]",
    "train.sync.units=8",
    "train.sync.windows_per_clip=4",
    "train.sync.batch_size=4",
    "train.sync.epochs=2",
    "registry.classification.floor=0.0",  # tiny models score near chance
    "registry.sync.floor=0.0",
    "tasks=[classification, sync]",  # the datasets these fixtures make; the captioner's tests make their own
]


@pytest.fixture(autouse=True)
def _fresh_s3_credentials():
    """Each test's S3 server has keys of its own, but boto3's default session, and MLflow's S3 clients made from it,
    keep the first keys a process reads: drop both after each test (a vidops process talks to one project's S3)."""
    yield
    import boto3
    from mlflow.store.artifact.s3_artifact_repo import _cached_get_s3_client

    boto3.DEFAULT_SESSION = None
    _cached_get_s3_client.cache_clear()


@pytest.fixture(scope="session")
def tiny_params() -> Params:
    return load_params(None, TINY)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory, tiny_params: Params) -> Path:
    """A generated classification dataset; tests copy it before changing anything."""
    return generate_dataset(
        tmp_path_factory.mktemp("generated") / "demo", "classification", tiny_params.generate.classification
    ).root


@pytest.fixture(scope="session")
def tiny_sync_dataset(tmp_path_factory: pytest.TempPathFactory, tiny_params: Params) -> Path:
    """A generated sync dataset (talking clips with sound)."""
    return generate_dataset(tmp_path_factory.mktemp("generated") / "demo-sync", "sync", tiny_params.generate.sync).root


@pytest.fixture
def project(tmp_path: Path, tiny_dataset: Path, tiny_sync_dataset: Path, tiny_params: Params) -> Layout:
    """A project folder holding copies of the tiny datasets and a params.yaml with the tiny params."""
    layout = Layout(tmp_path)
    shutil.copytree(tiny_dataset, layout.raw(tiny_params.datasets.classification))
    shutil.copytree(tiny_sync_dataset, layout.raw(tiny_params.datasets.sync))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params.to_yaml_dict()))
    return layout


@pytest.fixture
def mlflow_at():
    """`mlflow_at(store)` points MLflow's fluent API (models:/ URIs, start_run) at a store for the rest of the test; the
    process's tracking URI and MLFLOW_TRACKING_URI come back afterwards (mlflow.set_tracking_uri exports it, and the
    tests after this one would reach this store)."""
    from contextlib import ExitStack

    from vidops.components.tracking import Tracking, fluent_at

    with ExitStack() as stack:
        yield lambda store: stack.enter_context(fluent_at(store if isinstance(store, Tracking) else Tracking(store)))


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect API for the whole session: it takes about 10 s to start."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def trained_project(
    tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path, tiny_sync_dataset: Path, tiny_params: Params
) -> Layout:
    """A tiny project with both tasks taken through validate, extract, train and evaluate once; tests copy what they
    change."""
    from vidops.components import stages

    layout = Layout(tmp_path_factory.mktemp("trained"))
    shutil.copytree(tiny_dataset, layout.raw(tiny_params.datasets.classification))
    shutil.copytree(tiny_sync_dataset, layout.raw(tiny_params.datasets.sync))
    for task in tiny_params.tasks:
        for stage in (stages.validate, stages.extract, stages.train, stages.evaluate):
            stage(layout, tiny_params, task)
    return layout

"""Shared fixtures: one tiny generated dataset per session, a project laid out around it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from components.generate import generate_dataset  # noqa: E402
from components.layout import Layout  # noqa: E402
from components.params import Params, load_params  # noqa: E402

# Small enough to train in seconds; the demo-sized run lives in test_demo.py.
TINY = [
    "generate.clips_per_class=3",
    "generate.duration_s=1.0",
    "generate.size=48",
    "extract.frames=4",
    "extract.size=32",
    "train.classifier.filters=[4, 8]",
    "train.classifier.epochs=2",
    "train.classifier.batch_size=4",
]


@pytest.fixture(scope="session")
def tiny_params() -> Params:
    return load_params(None, TINY)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory, tiny_params: Params) -> Path:
    """A generated classification dataset; tests copy it before changing anything."""
    return generate_dataset(tmp_path_factory.mktemp("generated") / "demo", tiny_params.generate).root


@pytest.fixture
def project(tmp_path: Path, tiny_dataset: Path, tiny_params: Params) -> Layout:
    """A project folder holding a copy of the tiny dataset and a params.yaml with the tiny params."""
    layout = Layout(tmp_path)
    shutil.copytree(tiny_dataset, layout.raw(tiny_params.dataset.name))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params.to_yaml_dict()))
    return layout


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect API for the whole session: it takes about 10 s to start."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path, tiny_params: Params) -> Layout:
    """A tiny project taken through validate, extract, train and evaluate once; tests copy what they change."""
    from flows import stages

    layout = Layout(tmp_path_factory.mktemp("trained"))
    shutil.copytree(tiny_dataset, layout.raw(tiny_params.dataset.name))
    for stage in (stages.validate_dataset, stages.extract_features, stages.train_classifier, stages.evaluate_classifier):
        stage(layout, tiny_params)
    return layout

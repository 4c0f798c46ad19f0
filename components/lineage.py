"""Lineage: where a registered version came from (run, flow run, commit, params, dataset and its DVC version), as
its tags recorded it, and the tags a training records."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidops.components import versioning
from vidops.components.errors import VidopsError
from vidops.components.params import Task
from vidops.components.tracking import Tracking, refused_credentials


@dataclass(frozen=True)
class Lineage:
    """Where a registered version came from, as its tags recorded it."""

    model_name: str
    version: str
    aliases: tuple[str, ...]
    run_id: str
    tags: dict[str, str]  # vidops.dataset, vidops.dataset_version, vidops.params_sha256, mlflow.source.git.commit, ...

    @property
    def dataset(self) -> str | None:
        return self.tags.get("vidops.dataset")

    @property
    def dataset_version(self) -> str | None:
        return self.tags.get("vidops.dataset_version")


def lineage(tracking: Tracking, model_uri: str) -> Lineage:
    """The lineage of `models:/NAME/VERSION` or `models:/NAME@ALIAS`: the version's tags, over its run's."""
    from mlflow import MlflowClient

    name, version = registered_version(tracking, model_uri)
    with _in_registry(tracking, model_uri):
        run_tags = MlflowClient(tracking.uri).get_run(version.run_id).data.tags if version.run_id else {}
    return Lineage(name, str(version.version), tuple(version.aliases), version.run_id, {**run_tags, **version.tags})


def registered_version(tracking: Tracking, model_uri: str) -> tuple[str, Any]:
    """The model name and the registry's version record that `models:/NAME/VERSION` or `models:/NAME@ALIAS` names."""
    from mlflow import MlflowClient

    found = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([\w-]+))", model_uri)
    if not found:
        raise VidopsError(
            f"{model_uri}: not a registered model URI such as models:/vidops-classifier@champion "
            "or models:/vidops-classifier/3"
        )
    name, number, alias_name = found.groups()
    client = MlflowClient(tracking.uri)
    with _in_registry(tracking, model_uri):
        return name, client.get_model_version(name, number) if number else client.get_model_version_by_alias(
            name, alias_name
        )


@contextmanager
def _in_registry(tracking: Tracking, model_uri: str) -> Iterator[None]:
    """What the registry says of `model_uri` while the block asks it: an MLflow error is "not in the registry", a
    VidopsError naming the URI and the store, unless the server refused this client's credentials (the command line
    names the variables to set for that)."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        if refused_credentials(exc):
            raise
        raise VidopsError(
            f"{model_uri}: not in the registry at {tracking.uri}: {exc.message.splitlines()[0]}"
        ) from None


def recorded_tags(task: Task, root: Path, dataset: Path, accepted: Path, params: dict[str, Any]) -> dict[str, str]:
    """What a training records of where its model comes from: the dataset folder and its DVC version (the hash `dvc add`
    would pin for it as it is now), the hash of the accepted clips' table, the hash of `params` (every param the task's
    stages read), and the project's git commit when it is in git."""
    tags = {
        "vidops.task": task,
        "vidops.dataset": str(dataset.relative_to(root)) if dataset.is_relative_to(root) else str(dataset),
        "vidops.dataset_version": versioning.current_version(root, dataset),
        "vidops.manifest_sha256": hashlib.sha256(accepted.read_bytes()).hexdigest(),
        "vidops.params_sha256": hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest(),
    }
    if commit := versioning.git_commit(root):
        tags["mlflow.source.git.commit"] = commit
    return tags

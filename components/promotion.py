"""Promotion: the gate that crowns a champion, and a person's promote and rollback.

The gate scores the challenger and the current champion on the same held-out clips, the
project's current test split, each through the extraction params it was trained with, and
moves `champion` to the challenger only when it passes the task's floor and beats the
champion by `registry.min_improvement`. The champion it replaces keeps `previous-champion`.
Every decision and its reason is recorded on the version, and the gate's scores are logged
to its MLflow run. Aliases, not the deprecated stages.

These functions read, decide and then move aliases; the caller holds the model's lock around them, so two decisions
never interleave: `file_lock` for the embedded store, which only this machine reaches, or the profile's
(`vidops.stack.profiles.registry_lock`) for a store that several machines share.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vidops.components.catalog import read_catalog
from vidops.components.errors import VidopsError
from vidops.components.extraction import extract_features, params_hash
from vidops.components.io import write_csv, write_json
from vidops.components.layout import DECISION, INDEX, LABELS_FILE, MODEL_FILE, Layout
from vidops.components.params import ExtractParams, FitParams, ModelRegistryParams
from vidops.components.registry import CHALLENGER, CHAMPION, EVALUATED, PREVIOUS, alias
from vidops.components.seal import UNFINISHED, download_version, trusted_download
from vidops.components.tasks import TaskSpec, spec
from vidops.components.tracking import Tracking


@dataclass(frozen=True)
class TestSet:
    """The held-out clips every version is scored on: the accepted test clips, extracted with `extract`."""

    dataset_dir: Path
    accepted_table: Path
    features_dir: Path
    extract: ExtractParams


@dataclass(frozen=True)
class Decision:
    model_name: str
    version: str
    champion: bool  # the version is champion after the decision
    decision: str  # champion, not promoted, already champion
    reason: str
    metric: str
    score: float | None  # the version's, on the test set
    champion_version: str | None = None  # the champion it was measured against
    champion_score: float | None = None


class Incomparable(VidopsError):
    """A version that cannot be scored on this test set: a model of other classes than the clips' labels."""


def gate(
    tracking: Tracking,
    name: str,
    version: str | None,
    rule: ModelRegistryParams,
    margin: float,
    test: TestSet,
    reports_dir: Path,
    registry_key: bytes | None = None,
) -> Decision:
    """Score `version` (default: the challenger) and the champion on `test`; crown `version` if it passes
    `rule.floor` and beats the champion by more than `margin`. Scores go under `reports_dir`. With the project's
    `registry_key`, a version vidops did not seal is never loaded."""
    client = _client(tracking, name)
    version = version or _challenger(client, name)
    _evaluated(client, name, version)
    current = alias(client, name, CHAMPION)
    metric = rule.metric
    if current is not None and str(current.version) == version:
        return _record(
            client,
            name,
            Decision(name, version, True, "already champion", f"v{version} is already champion", metric, None),
            reports_dir,
        )
    try:
        score = score_version(tracking, name, version, test, reports_dir / f"v{version}", registry_key)[metric]
    except Incomparable as exc:
        return _record(
            client, name, Decision(name, version, False, "not promoted", str(exc), metric, None), reports_dir
        )
    if score < rule.floor:
        decision = Decision(
            name, version, False, "not promoted", f"{metric} {score:.4f} is below the floor {rule.floor}", metric, score
        )
    elif current is None:
        decision = Decision(
            name, version, True, CHAMPION, f"first model to pass the floor: {metric} {score:.4f}", metric, score
        )
    else:
        decision = _against(
            tracking, name, version, score, str(current.version), metric, margin, test, reports_dir, registry_key
        )
    if decision.champion:
        _move_champion(client, name, version)
    return _record(client, name, decision, reports_dir)


def _against(
    tracking: Tracking,
    name: str,
    version: str,
    score: float,
    champion: str,
    metric: str,
    margin: float,
    test: TestSet,
    reports_dir: Path,
    registry_key: bytes | None,
) -> Decision:
    """The decision between `version` and the champion, both scored on the same clips."""
    try:
        best = score_version(tracking, name, champion, test, reports_dir / f"v{champion}", registry_key)[metric]
    except Incomparable as exc:
        reason = (
            f"champion v{champion} cannot be scored on this test set ({exc}); "
            "compare them yourself and `vidops promote` by hand"
        )
        return Decision(name, version, False, "not promoted", reason, metric, score, champion)
    won = score > best + margin
    verdict = "beats" if won else "does not beat"
    reason = f"{metric} {score:.4f} {verdict} champion v{champion} ({best:.4f}, same test clips) by more than {margin}"
    return Decision(name, version, won, CHAMPION if won else "not promoted", reason, metric, score, champion, best)


def score_version(
    tracking: Tracking, name: str, version: str, test: TestSet, reports_dir: Path, registry_key: bytes | None = None
) -> dict[str, float]:
    """Evaluate a registered version on `test` with its task's evaluation: its Keras model, its labels, its extraction
    and train params (the test clips are extracted again when its extraction differs from the project's). Writes the
    evaluation's files to `reports_dir`. With `registry_key`, only a version vidops sealed (`seal.trusted_download`)
    is loaded."""
    with tempfile.TemporaryDirectory() as tmp:
        if registry_key is not None:
            served = trusted_download(tracking, name, version, registry_key, Path(tmp))
        else:
            served = download_version(tracking, name, version, Path(tmp))
        config = json.loads((served / "artifacts" / "config.json").read_text())
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        shutil.copy(served / "artifacts" / MODEL_FILE, model_dir / MODEL_FILE)
        write_json(model_dir / LABELS_FILE, config["labels"])
        extract = ExtractParams.model_validate(config["extract"])
        features = (
            test.features_dir
            if params_hash(extract) == params_hash(test.extract)
            else _extract_test(test, extract, Path(tmp) / "features")
        )
        known = json.loads((features / INDEX).read_text())["labels"]
        task = spec(config["task"])
        if task.labelled and known != config["labels"]:
            raise Incomparable(f"v{version} knows the classes {config['labels']}, the test clips are of {known}")
        return task.evaluate(model_dir, features, reports_dir, _train_params(task, config)).metrics


def _train_params(task: TaskSpec, config: dict[str, Any]) -> FitParams:
    """The version's train params; a version registered before its config held them kept only the sync window and
    offset, at the config's top."""
    given = config.get("train") or {
        key: value for key, value in config.items() if key in task.train_params.model_fields
    }
    return task.train_params.model_validate(given, strict=False)  # JSON has lists where the params have tuples


def _extract_test(test: TestSet, extract: ExtractParams, features_dir: Path) -> Path:
    """The test clips extracted with another version's params, into `features_dir`."""
    manifest = read_catalog(test.accepted_table)
    write_csv(features_dir / "test.csv", manifest[manifest["split"] == "test"])
    extract_features(test.dataset_dir, features_dir / "test.csv", features_dir, extract)
    return features_dir


def promote(tracking: Tracking, name: str, version: str | None, reason: str) -> str:
    """A person's decision: make `version` (default: the challenger) champion; the old one becomes previous-champion.

    Refuses a model or version that does not exist, and a version that was never evaluated.
    """
    client = _client(tracking, name)
    version = version or _challenger(client, name)
    _evaluated(client, name, version)
    _move_champion(client, name, version)
    _tag(client, name, version, "champion by hand", reason)
    return version


def rollback(tracking: Tracking, name: str, reason: str) -> str:
    """Move `champion` back to `previous-champion` (and the current champion to `previous-champion`); the version now
    champion."""
    client = _client(tracking, name)
    previous, current = alias(client, name, PREVIOUS), alias(client, name, CHAMPION)
    if previous is None:
        raise VidopsError(f"model {name} has no {PREVIOUS} to roll back to")
    client.set_registered_model_alias(name, CHAMPION, previous.version)
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, current.version)
        _tag(client, name, str(current.version), "rolled back", reason)
    _tag(client, name, str(previous.version), "champion by rollback", reason)
    return str(previous.version)


def _record(client: Any, name: str, decision: Decision, reports_dir: Path) -> Decision:
    """The decision as tags on the version, in `reports_dir`, and, with its scores, in the version's MLflow run."""
    _tag(client, name, decision.version, decision.decision, decision.reason)
    write_json(reports_dir / DECISION, asdict(decision))
    run_id = client.get_model_version(name, decision.version).run_id
    client.log_artifacts(run_id, str(reports_dir), artifact_path="promotion")
    return decision


def _move_champion(client: Any, name: str, version: str) -> None:
    current = alias(client, name, CHAMPION)
    if current is not None and str(current.version) != version:
        client.set_registered_model_alias(name, PREVIOUS, current.version)
    client.set_registered_model_alias(name, CHAMPION, version)


def _tag(client: Any, name: str, version: str, decision: str, reason: str) -> None:
    client.set_model_version_tag(name, version, "vidops.decision", decision)
    client.set_model_version_tag(name, version, "vidops.reason", reason)


def _client(tracking: Tracking, name: str) -> Any:
    """A client of the tracking server that holds the registered model `name`, or a VidopsError naming both."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking.uri)
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise VidopsError(f"no registered model {name} in {tracking.uri}") from None
    return client


def _challenger(client: Any, name: str) -> str:
    challenger = alias(client, name, CHALLENGER)
    if challenger is None:
        raise VidopsError(f"model {name} has no {CHALLENGER}; name the version with --version")
    return str(challenger.version)


def _evaluated(client: Any, name: str, version: str) -> None:
    """Refuse a version that does not exist or was never evaluated."""
    from mlflow.exceptions import MlflowException

    try:
        tags = client.get_model_version(name, version).tags
    except MlflowException:
        raise VidopsError(f"model {name} has no version {version}") from None
    if UNFINISHED in tags:
        raise VidopsError(
            f"model {name} version {version}: its {tags[UNFINISHED]} (tagged {UNFINISHED}); "
            "only whole versions are promoted"
        )
    if EVALUATED not in tags:
        raise VidopsError(f"model {name} version {version} was never evaluated; only evaluated versions are promoted")


@contextmanager
def file_lock(layout: Layout, model_name: str, timeout_s: float = 1800) -> Iterator[None]:
    """`model_name`'s lock as a file beside the project's embedded MLflow store (.vidops/locks/)."""
    from filelock import FileLock, Timeout

    (layout.state / "locks").mkdir(parents=True, exist_ok=True)
    path = layout.state / "locks" / f"{model_name}.lock"
    try:
        with FileLock(path, timeout=timeout_s):
            yield
    except Timeout:
        raise VidopsError(f"{path}: another promotion of {model_name} held the lock for {timeout_s:.0f} s") from None

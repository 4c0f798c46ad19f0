"""The gate on real models: the challenger and the champion scored on the same test clips, aliases moved only for a
better one, every decision recorded; promote, rollback, and two promotions at the same time."""

import contextlib
import json
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from vidops.components import inputs, stages, tracking
from vidops.components.errors import VidopsError
from vidops.components.layout import MODEL_FILE, REPORT, Layout
from vidops.components.promotion import promote, rollback
from vidops.components.registry import CHALLENGER, CHAMPION, PREVIOUS, register_model
from vidops.components.seal import registry_key
from vidops.components.tasks.classification.evaluation import evaluate_classifier
from vidops.components.tasks.classification.model import build_classifier
from vidops.components.tracking import fluent_at

NAME = "vidops-classifier"
TASK = "classification"


@pytest.fixture
def project(trained_project, tmp_path: Path, monkeypatch) -> Layout:
    """A copy of the trained project, with an embedded MLflow store of its own."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copytree(trained_project.root, tmp_path / "project", ignore=shutil.ignore_patterns(".vidops"))
    return Layout(tmp_path / "project")


def _constant(model, features: Path) -> None:
    """Zero the last layer: every clip gets the first class."""
    last = model.get_layer("probabilities")
    last.set_weights([np.zeros_like(w) for w in last.get_weights()])


def _memorise(model, features: Path) -> None:
    """Fit the test clips themselves, so the model is right on every one of them (batch norm frozen)."""
    import keras

    split = inputs.open_split(features, "test", ("frames",))
    frames = inputs.in_memory(split, "frames")
    for layer in model.layers:
        layer.trainable = not isinstance(layer, keras.layers.BatchNormalization)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    keras.utils.set_random_seed(0)
    right = lambda: np.mean(np.argmax(model.predict(frames, verbose=0), axis=1) == split.labels)
    for _ in range(4):  # a few clips can take longer to fit from some starting weights
        model.fit(frames, split.labels, epochs=60, batch_size=len(frames), verbose=0)
        if right() == 1.0:
            break
    assert right() == 1.0


def _register(project: Layout, params, tmp_path: Path, change, logged_accuracy: float | None = None) -> str:
    """The trained classifier changed (or replaced) by `change`, evaluated and registered as a new version (the
    challenger)."""
    from vidops.components.layers import load_model

    folder = Path(tmp_path / f"variant-{len(list(tmp_path.glob('variant-*')))}")
    shutil.copytree(project.models(TASK), folder / "model")
    model = load_model(folder / "model" / MODEL_FILE)
    model = change(model, project.features(TASK)) or model
    model.save(folder / "model" / MODEL_FILE)
    metrics = evaluate_classifier(folder / "model", project.features(TASK), folder / "reports").metrics_path
    if logged_accuracy is not None:  # what the run logs, not what the gate measures
        metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "accuracy": logged_accuracy}))
    registered = register_model(
        folder / "model",
        project.features(TASK),
        project.raw(params.datasets.of(TASK)),
        metrics,
        project.catalog(TASK) / REPORT,
        params,
        TASK,
        tracking.locate(project),
        {},
        registry_key=registry_key(project),
    )
    return registered.version


def _aliases(project: Layout) -> dict[str, str]:
    client = MlflowClient(tracking.locate(project).uri)
    found = {}
    for alias in (CHAMPION, PREVIOUS, CHALLENGER):
        with contextlib.suppress(Exception):
            found[alias] = str(client.get_model_version_by_alias(NAME, alias).version)
    return found


def _tags(project: Layout, version: str) -> dict[str, str]:
    return MlflowClient(tracking.locate(project).uri).get_model_version(NAME, version).tags


def test_the_gate_scores_both_on_the_same_clips_and_crowns_only_a_better_model(project, tiny_params, tmp_path):
    constant = _register(project, tiny_params, tmp_path, _constant)
    first = stages.promote(project, tiny_params, TASK)
    assert (first.version, first.champion) == (constant, True) and "first model to pass the floor" in first.reason

    same = _register(project, tiny_params, tmp_path, _constant)
    tie = stages.promote(project, tiny_params, TASK)
    assert (tie.version, tie.champion, tie.champion_version) == (same, False, constant)
    assert tie.score == tie.champion_score and f"does not beat champion v{constant}" in tie.reason

    # logged as worse than it is: the gate measures it again, on the same clips as the champion
    better = _register(project, tiny_params, tmp_path, _memorise, logged_accuracy=0.0)
    won = stages.promote(project, tiny_params, TASK)
    assert (won.version, won.champion, won.score) == (better, True, 1.0)
    assert won.champion_score == tie.score and "beats champion" in won.reason
    assert _aliases(project) == {CHAMPION: better, PREVIOUS: constant, CHALLENGER: better}

    worse = _register(project, tiny_params, tmp_path, _constant, logged_accuracy=1.0)
    lost = stages.promote(project, tiny_params, TASK)
    assert (
        not lost.champion and lost.champion_score == 1.0 and f"does not beat champion v{better} (1.0000" in lost.reason
    )
    assert (
        _tags(project, worse)["vidops.decision"] == "not promoted"
        and _tags(project, worse)["vidops.reason"] == lost.reason
    )
    assert _aliases(project)[CHAMPION] == better

    decision = json.loads((project.reports(TASK) / "promotion" / "promotion.json").read_text())
    assert decision["version"] == worse and decision["champion_score"] == 1.0
    assert (project.reports(TASK) / "promotion" / f"v{better}" / "confusion.csv").is_file()
    client = MlflowClient(tracking.locate(project).uri)
    logged = {a.path for a in client.list_artifacts(client.get_model_version(NAME, worse).run_id, "promotion")}
    assert {"promotion/promotion.json", f"promotion/v{worse}", f"promotion/v{better}"} <= logged


def test_the_floor_holds_and_promote_and_rollback_move_the_aliases(project, tiny_params, tmp_path):
    floored = tiny_params.model_copy(
        update={
            "registry": tiny_params.registry.model_copy(
                update={"classification": tiny_params.registry.classification.model_copy(update={"floor": 0.9})}
            )
        }
    )
    low = _register(project, floored, tmp_path, _constant)
    refused = stages.promote(project, floored, TASK)
    assert not refused.champion and "below the floor 0.9" in refused.reason and CHAMPION not in _aliases(project)
    high = _register(project, floored, tmp_path, _memorise)
    assert stages.promote(project, floored, TASK).champion
    found = tracking.locate(project)

    assert promote(found, NAME, low, "a person knows better") == low
    assert _aliases(project) == {CHAMPION: low, PREVIOUS: high, CHALLENGER: high}
    assert _tags(project, low)["vidops.decision"] == "champion by hand"
    assert rollback(found, NAME, f"v{low} misbehaves in production") == high
    assert _aliases(project) == {CHAMPION: high, PREVIOUS: low, CHALLENGER: high}
    assert _tags(project, low)["vidops.reason"] == f"v{low} misbehaves in production"
    again = stages.promote(project, floored, TASK)
    assert again.champion and again.decision == "already champion"

    with pytest.raises(VidopsError, match="model vidops-classifier has no version 9"):
        promote(found, NAME, "9", "typo")
    with pytest.raises(VidopsError, match="no registered model vidops-nothing in sqlite:"):
        rollback(found, "vidops-nothing", "why not")
    client = MlflowClient(found.uri)
    source = client.get_model_version(NAME, low)
    with fluent_at(found):  # MLflow looks the logged model of a models:/ source up through its process-wide store
        unevaluated = client.create_model_version(NAME, source.source, run_id=source.run_id)
    with pytest.raises(VidopsError, match=f"version {unevaluated.version} was never evaluated"):
        promote(found, NAME, str(unevaluated.version), "untested")
    with pytest.raises(VidopsError, match="never evaluated"):
        stages.promote(project, floored, TASK, str(unevaluated.version))


def test_a_champion_of_other_extraction_params_is_scored_on_the_same_clips_extracted_its_way(
    project, tiny_params, tmp_path
):
    champion = _register(project, tiny_params, tmp_path, _memorise)
    assert stages.promote(project, tiny_params, TASK).champion
    changed = tiny_params.model_copy(
        update={
            "extract": tiny_params.extract.model_copy(
                update={"classification": tiny_params.extract.classification.model_copy(update={"size": 40})}
            )
        }
    )
    stages.extract(project, changed, TASK)  # the project moved on: its test clips are now 40 x 40
    p = changed.extract.classification
    untrained = lambda model, features: build_classifier(p.frames, p.size, 7, changed.train.classification)
    challenger = _register(project, changed, tmp_path, untrained)
    decision = stages.promote(project, changed, TASK)
    assert decision.version == challenger and not decision.champion
    assert decision.champion_version == champion and decision.champion_score == 1.0  # at 32 x 32, as it was trained


def _gate(root: str, params, version: str):
    return stages.promote(Layout(Path(root)), params, TASK, version)


def test_two_promotions_at_the_same_time_leave_one_champion_and_both_decisions(project, tiny_params, tmp_path):
    base = _register(project, tiny_params, tmp_path, _constant)
    assert stages.promote(project, tiny_params, TASK).champion
    a = _register(project, tiny_params, tmp_path, _memorise)
    b = _register(project, tiny_params, tmp_path, _memorise)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        decisions = list(pool.map(_gate, [str(project.root)] * 2, [tiny_params] * 2, [a, b]))
    winners = [d for d in decisions if d.champion]
    assert len(winners) == 1, decisions  # the second was measured against the first, not against v{base}
    loser = next(d for d in decisions if not d.champion)
    assert loser.champion_version == winners[0].version and "does not beat" in loser.reason
    assert _aliases(project) == {CHAMPION: winners[0].version, PREVIOUS: base, CHALLENGER: b}
    assert {_tags(project, v)["vidops.decision"] for v in (a, b)} == {"champion", "not promoted"}


def test_with_an_mlflow_server_the_lock_is_a_prefect_concurrency_limit_of_one(prefect_api, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client

    from vidops.stack.profiles import registry_lock

    monkeypatch.setenv(
        "MLFLOW_TRACKING_URI", "http://127.0.0.1:9"
    )  # a server: shared by machines, so the lock is Prefect's
    layout = Layout(tmp_path)
    with (
        registry_lock(layout, "vidops-classifier"),
        pytest.raises(
            VidopsError, match="vidops-registry-vidops-classifier: another promotion of vidops-classifier held it"
        ),
        registry_lock(layout, "vidops-classifier", timeout_s=2),
    ):
        pass
    with registry_lock(layout, "vidops-classifier", timeout_s=5):  # released
        pass
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("vidops-registry-vidops-classifier").limit == 1
    assert not (tmp_path / ".vidops" / "locks").exists()

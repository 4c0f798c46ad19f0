"""A task vidops does not ship, in a folder of its own (tests/colour_task/) and found as an installed package is, by an
entry point of the group `vidops.tasks`, goes through every stage, the registry, the gate and serving, with no edit
anywhere else: the specs are the one place that knows a task. And each way a task can be wrong is named at start."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow import MlflowClient

from vidops.components import tasks, tracking
from vidops.components.errors import VidopsError
from vidops.components.layout import DECISION, Layout
from vidops.components.params import load_params
from vidops.components.registry import CHAMPION, EVALUATED

NAME = "colour"
HERE = Path(__file__).resolve().parent


def _install(site: Path, entry: str, name: str = NAME) -> None:
    """A distribution's metadata in `site`, naming `entry` as a task: what `pip install` of a task package leaves."""
    info = site / f"vidops_{name}_task-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vidops-{name}-task\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[vidops.tasks]\n{name} = {entry}\n")


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """colour_task installed as a package: its metadata on sys.path (its code, tests/, is there already)."""
    site = tmp_path / "site"
    _install(site, "colour_task:SPEC")
    monkeypatch.syspath_prepend(str(site))
    assert NAME in tasks.discover()
    yield tasks.spec(NAME)
    monkeypatch.undo()
    tasks.discover()


def test_a_task_in_its_own_package_is_trained_evaluated_registered_gated_and_served(installed, tmp_path: Path):
    from vidops.components import stages
    from vidops.components.generate import generate_dataset
    from vidops.components.serving import encode

    layout = Layout(tmp_path / "project")
    params = load_params(
        None, [f"tasks=[{NAME}]", f"train.{NAME}.units=4"]
    )  # params.yaml groups of a task vidops never knew
    assert params.train.of(NAME).units == 4 and params.registry.of(NAME).model_name == "vidops-colour"
    generate_dataset(layout.raw(params.datasets.of(NAME)), NAME, params.generate.of(NAME))

    assert stages.validate(layout, params, NAME).accepted == 21
    stages.extract(layout, params, NAME)
    trained = stages.train(layout, params, NAME)
    assert trained.path == layout.model(NAME) and trained.epochs == 2
    assert (layout.models(NAME) / "history.json").is_file() and not (
        layout.models(NAME) / "checkpoints"
    ).exists()  # training.fit's
    scores = stages.evaluate(layout, params, NAME)
    registered = stages.register(layout, params, NAME)
    decision = stages.promote(layout, params, NAME)

    assert (registered.model_name, registered.version) == ("vidops-colour", "1")
    assert decision.champion and decision.score == pytest.approx(scores.metrics["accuracy"])
    client = MlflowClient(tracking.locate(layout).uri)
    version = client.get_model_version_by_alias("vidops-colour", CHAMPION)
    assert version.tags[EVALUATED] == f"accuracy={scores.metrics['accuracy']}" and version.tags["vidops.task"] == NAME
    assert json.loads((layout.promotion(NAME) / DECISION).read_text())["decision"] == CHAMPION
    curve = client.get_metric_history(registered.run_id, "train_loss")
    assert [m.step for m in curve] == [0, 1]  # the epoch hook reported each epoch live
    assert installed.code == HERE / "colour_task"  # its folder keys its cached stages, as a built-in task's does

    # the served model carries the task's code: it loads where neither the entry point nor tests/ is on the path
    clip = next(layout.raw(params.datasets.of(NAME)).glob("rotate/*.mp4"))
    served = subprocess.run(
        [sys.executable, "-c", SERVE, f"models:/vidops-colour@{CHAMPION}", encode(clip)],
        capture_output=True,
        text=True,
        env=_without_tests_on_the_path(tracking.locate(layout).uri),
        cwd=tmp_path,
    )
    assert served.returncode == 0, served.stderr[-2000:]
    answer = json.loads(served.stdout.strip().splitlines()[-1])
    assert answer["label"] in trained.labels and 0 < answer["probability"] <= 1


SERVE = textwrap.dedent(
    """
    import json, sys
    import mlflow, pandas as pd
    assert "colour_task" not in sys.modules
    model = mlflow.pyfunc.load_model(sys.argv[1])
    print(json.dumps(model.predict(pd.DataFrame({"video": [sys.argv[2]]})).iloc[0].to_dict()))
    """
)


def _without_tests_on_the_path(tracking_uri: str) -> dict[str, str]:
    import os

    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "MLFLOW_TRACKING_URI": tracking_uri}


def test_a_task_without_a_spec_is_an_error_that_lists_the_known_tasks():
    with pytest.raises(VidopsError, match=r"tasks: no task 'colour'; known tasks: classification, sync, captioning"):
        load_params(None, [f"tasks=[{NAME}]"])
    with pytest.raises(VidopsError, match=r"no task 'colour'; known tasks: classification, sync, captioning"):
        tasks.spec(NAME)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "colour_task.missing:SPEC",
            r"entry point colour = colour_task.missing:SPEC \(group vidops.tasks\) failed to import",
        ),
        (
            "colour_task.params:ColourParams",
            r"colour_task.params:ColourParams .*SPEC is a ModelMetaclass, not a vidops.components.tasks.TaskSpec",
        ),
        (
            "vidops.components.tasks.sync:SPEC",
            r"task 'sync' is defined twice: by vidops.components.tasks.sync and by entry point",
        ),
    ],
)
def test_an_entry_point_that_cannot_be_a_task_is_named_at_start(source, message, tmp_path, monkeypatch):
    _install(tmp_path, source)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(VidopsError, match=message):
            tasks.discover()
        cli = subprocess.run(
            [sys.executable, "-m", "vidops", "--help"], capture_output=True, text=True, env=_with_path(tmp_path)
        )
        assert cli.returncode == 1 and "vidops: error:" in cli.stderr and "Traceback" not in cli.stderr
    finally:
        monkeypatch.undo()
        tasks.discover()


def _with_path(site: Path) -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(HERE)])}


def test_a_spec_whose_gate_metric_it_does_not_write_or_a_missing_function_is_named():
    from colour_task.spec import SPEC

    wrong_metric = SPEC.__class__(**{**vars(SPEC), "name": "colour2", "metrics": ("macro_f1",)})
    with pytest.raises(
        VidopsError,
        match=r"task 'colour2' .*default gate metric 'accuracy' is not among the metrics its evaluate writes",
    ):
        tasks.register(wrong_metric)
    no_train = SPEC.__class__(**{**vars(SPEC), "name": "colour3", "train": None})
    with pytest.raises(VidopsError, match=r"task 'colour3' .*: train must be functions"):
        tasks.register(no_train)
    with pytest.raises(
        VidopsError, match=r"registry.classification.metric: 'f1' is not a metric the classification task writes"
    ):
        load_params(None, ["registry.classification.metric=f1"])

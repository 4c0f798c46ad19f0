"""Task specs: all that differs between the models vidops trains, one folder (or installed package) per task.

The stages, flows, registry, serving, promotion and the CLI ask a task's spec and never name a task. A task is a
package whose `SPEC` is a `TaskSpec`: a folder of this package, found on first use, or an installed package that
names it by an entry point of the group `vidops.tasks` (docs/ADDING-A-TASK.md). A spec's own module imports no
TensorFlow: its train and evaluate functions import the heavy modules inside, so the `vidops` command starts fast.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from vidops.components.errors import VidopsError
from vidops.components.params import ExtractParams, FitParams, GenerateParams, ModelRegistryParams, Task

# an installed package's task: `[project.entry-points."vidops.tasks"] name = "package:SPEC"`
ENTRY_POINTS = "vidops.tasks"


@dataclass(frozen=True)
class TrainedModel:
    """What a task's `train` returns (here, not in components.training, so that reading it needs no TensorFlow)."""

    path: Path
    labels: tuple[str, ...]  # class names; the sync model's are the offsets -K..K, the captioner's its vocabulary
    epochs: int  # trained in all, resumed ones included
    resumed_from: int  # the epoch a checkpoint resumed from; 0 for a fresh start
    history: dict[str, list[float]]


@dataclass(frozen=True)
class DemoData:
    """What a task's `generate` wrote: its labels (the clips' folders) and how many clips."""

    labels: tuple[str, ...]
    clips: int


@dataclass(frozen=True)
class TaskDefaults:
    """The task's entries in params.yaml's per-task groups, as they are when the file leaves them out."""

    dataset: str  # datasets.<task>: data/raw/<name>/
    extract: ExtractParams
    train: FitParams  # its class is the task's own model of train.<task>
    registry: ModelRegistryParams  # registry.<task>: the model's name, the metric the gate scores and its floor
    # generate.<task>: the demo data, for a task with a `generate`
    generate: GenerateParams = field(default_factory=GenerateParams)


def _any_combination(name: Task, extract: ExtractParams, train: FitParams) -> None:
    """A task whose extract and train params always fit together."""


def _nothing_needed(name: Task, train: FitParams) -> None:
    """A task whose params name no file."""


@dataclass(frozen=True, eq=False)  # eq=False: a spec is hashed by identity, for params_model's cache
class TaskSpec:
    """One task: its params, what validation asks of its clips, how its model is trained, scored and served."""

    name: Task
    defaults: TaskDefaults
    # (features_dir, model_dir, train params, on_epoch) -> TrainedModel; module-level: it runs in a spawned process
    train: Callable[..., TrainedModel]
    # (model_dir, features_dir, reports_dir, train params) -> evaluation.Evaluation: the evaluate stage, and the gate's
    # score
    evaluate: Callable[[Path, Path, Path, Any], Any]
    # the metrics its evaluate writes for every dataset the task accepts: the gate may score any of them
    metrics: tuple[str, ...]
    headline: Callable[[dict[str, Any]], str]  # the one line that says how good a model is, from its metrics
    # (the first test clip's arrays, train params) -> what the Keras model takes: its logged input example
    input_example: Callable[[dict[str, np.ndarray], Any], Any]
    # (Keras model, extraction.ClipFeatures, labels, train params) -> the served model's answer for one clip;
    # a VidopsError is the client's fault (HTTP 400)
    predict: Callable[[Any, Any, list[str], Any], dict[str, Any]]
    # (name, extract params, train params): a ValueError naming the keys of a combination that cannot work
    check: Callable[[Task, ExtractParams, Any], None] = _any_combination
    # (name, train params): a VidopsError naming the key when a file the params name is not on this machine; asked
    # before any work, so it must not need TensorFlow
    preflight: Callable[[Task, Any], None] = _nothing_needed
    needs_audio: bool = False  # a clip without audio is quarantined
    min_classes: int = 2  # fewer classes among the accepted clips fails validation
    labelled: bool = True  # the model's classes are the clips' labels: a version of other classes cannot be scored here
    # its clips need captions: the dataset's captions.csv is checked with the clips, and the accepted ones go beside the
    # features
    captioned: bool = False
    # (folder, generate params) -> the demo data written into the folder, for `vidops demo` and `vidops generate`
    generate: Callable[[Path, GenerateParams], DemoData] | None = None
    # where it comes among the tasks when params.yaml names none (ties by name): the demo's order, and the task a
    # command such as `vidops validate` takes when none is named
    order: int = 100
    # the columns of training.csv that dvc.yaml draws: its train stage plots the loss of every task, and a task with
    # more curves gets them drawn together in the training-curves plot
    curves: tuple[str, ...] = ("loss",)
    # dvc.yaml's plots of the task's own reports: title -> DVC's plot options, `y` naming files under reports/<task>/
    plots: Mapping[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def fields(self) -> tuple[str, ...]:
        """The shard arrays its model reads of a clip."""
        return ("frames", "audio") if self.needs_audio else ("frames",)

    @property
    def train_params(self) -> type[FitParams]:
        """The task's model of its train.<task> group."""
        return type(self.defaults.train)

    @property
    def package(self) -> str:
        """The module that holds the task: its folder's package, or the module itself for a task defined in one file."""
        module = sys.modules[self.train.__module__]
        return module.__package__ or module.__name__

    @property
    def code(self) -> Path:
        """The task's own code, a folder (or a file): part of every stage's cache key and DVC deps."""
        module = sys.modules[self.package]
        where = Path(module.__file__ or "")
        return where.parent if where.name == "__init__.py" else where


_SPECS: dict[Task, TaskSpec] = {}
_FOUND = False


def register(task: TaskSpec, source: str | None = None) -> TaskSpec:
    """Make `task` known to params.yaml, the stages and the CLI; an error naming both when another spec has its name."""
    _discovered()
    source = source or getattr(getattr(task, "train", None), "__module__", None) or repr(task)
    _check(task, source)
    known = _SPECS.get(task.name)
    if known is not None and known is not task:
        raise VidopsError(f"task {task.name!r} is defined twice: by {known.package} and by {source}; rename one")
    _SPECS[task.name] = task
    return task


def unregister(name: Task) -> None:
    _SPECS.pop(name, None)


def spec(name: Task) -> TaskSpec:
    """The spec of task `name`; an error listing the known tasks when there is none."""
    try:
        return _discovered()[name]
    except KeyError:
        raise VidopsError(f"no task {name!r}; known tasks: {', '.join(_SPECS)}") from None


def served(name: Task, package: str) -> TaskSpec:
    """The spec of a served model's task: a known task, or the one its model carries as code (`package`, on sys.path
    where the model loads), registered on first use: a served model needs no installed task package."""
    if name not in _discovered():
        register(*_load(package, f"the served model's task package {package}"))
    return spec(name)


def discover() -> tuple[Task, ...]:
    """Find the tasks again (a package installed since this process first looked): this package's folders and the
    installed entry points; the names found."""
    global _FOUND
    _FOUND = False
    _SPECS.clear()
    return names()


def specs() -> tuple[TaskSpec, ...]:
    return tuple(_discovered().values())


def names() -> tuple[Task, ...]:
    return tuple(_discovered())


def _discovered() -> dict[Task, TaskSpec]:
    """Every task, found once: this package's folders (by name), then the installed packages' entry points."""
    global _FOUND
    if not _FOUND:
        _FOUND = True
        try:
            for found in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg):
                _add(_load(f"{__name__}.{found}", f"{Path(__path__[0]) / found}"))
            for entry in importlib.metadata.entry_points(group=ENTRY_POINTS):
                _add(_entry_point(entry))
            ordered = sorted(_SPECS.values(), key=lambda task: (task.order, task.name))
            _SPECS.clear()
            _SPECS.update((task.name, task) for task in ordered)
        except BaseException:
            _FOUND = False
            _SPECS.clear()
            raise
    return _SPECS


def _add(found: tuple[TaskSpec, str]) -> None:
    task, source = found
    _check(task, source)
    if task.name in _SPECS:
        raise VidopsError(
            f"task {task.name!r} is defined twice: by {_SPECS[task.name].package} and by {source}; rename one"
        )
    _SPECS[task.name] = task


def _load(module: str, where: str) -> tuple[TaskSpec, str]:
    """The SPEC of a task folder; an error naming the folder when it cannot be imported or has none."""
    try:
        found = importlib.import_module(module)
    except Exception as exc:
        raise VidopsError(f"{where}: the task folder failed to import: {type(exc).__name__}: {exc}") from exc
    if not hasattr(found, "SPEC"):
        raise VidopsError(
            f"{where}: a task folder defines SPEC, its TaskSpec, in its __init__.py (docs/ADDING-A-TASK.md)"
        )
    return found.SPEC, where


def _entry_point(entry: importlib.metadata.EntryPoint) -> tuple[TaskSpec, str]:
    source = f"entry point {entry.name} = {entry.value} (group {ENTRY_POINTS})"
    try:
        return entry.load(), source
    except Exception as exc:
        raise VidopsError(f"{source} failed to import: {type(exc).__name__}: {exc}") from exc


REQUIRED = ("train", "evaluate", "headline", "input_example", "predict")


def _check(task: Any, source: str) -> None:
    """A spec that cannot work, named with what is missing, before any work is done."""
    if not isinstance(task, TaskSpec):
        raise VidopsError(f"{source}: SPEC is a {type(task).__name__}, not a vidops.components.tasks.TaskSpec")
    missing = [f.name for f in fields(task) if f.name in REQUIRED and not callable(getattr(task, f.name))]
    if missing:
        raise VidopsError(
            f"task {task.name!r} ({source}): {', '.join(missing)} must be functions (docs/ADDING-A-TASK.md)"
        )
    if task.defaults.registry.metric not in task.metrics:
        raise VidopsError(
            f"task {task.name!r} ({source}): its default gate metric {task.defaults.registry.metric!r} "
            f"is not among the metrics its evaluate writes for every dataset ({', '.join(task.metrics)})"
        )
    if not isinstance(task.defaults.train, FitParams):
        raise VidopsError(
            f"task {task.name!r} ({source}): defaults.train is a {type(task.defaults.train).__name__}, not FitParams"
        )

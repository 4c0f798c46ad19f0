"""Task specs: everything that differs between the models vidops trains, one module per task.

The stages, flows, registry, serving, promotion and the CLI ask a task's spec and never name a
task. A new task is one module that builds a `TaskSpec` and `register`s it (docs/ADDING-A-TASK.md).
Specs are imported by the `vidops` command before it needs TensorFlow: a spec module imports
the heavy components inside its functions.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidops.components.errors import VidopsError
from vidops.components.params import ExtractParams, FitParams, GenerateParams, ModelRegistryParams, Task


@dataclass(frozen=True)
class TrainedModel:
    """What a task's `train` returns (defined here, not in components/training, so that reading it needs no TensorFlow)."""

    path: Path
    labels: tuple[str, ...]  # class names; the sync model's are the offsets -K..K
    epochs: int  # trained in all, resumed ones included
    resumed_from: int  # the epoch a checkpoint resumed from; 0 for a fresh start
    history: dict[str, list[float]]


@dataclass(frozen=True)
class TaskDefaults:
    """The task's entries in params.yaml's per-task groups, as they are when the file leaves them out."""

    dataset: str  # datasets.<task>: data/raw/<name>/
    extract: ExtractParams
    train: FitParams  # its class is the task's own model of train.<task>
    registry: ModelRegistryParams  # registry.<task>: the model's name, its headline metric and the gate's floor
    generate: GenerateParams = GenerateParams()  # generate.<task>: the demo data, for a task that has a `demo` kind


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
    train: Callable[..., Any]
    # (model_dir, features_dir, reports_dir, train params) -> evaluation.Evaluation: the evaluate stage, and how the gate scores
    evaluate: Callable[[Path, Path, Path, Any], Any]
    headline: Callable[[dict[str, Any]], str]  # the one line that says how good a model is, from its metrics
    # (the first test clip's arrays, train params) -> what the Keras model takes: its logged input example
    input_example: Callable[[dict[str, np.ndarray], Any], Any]
    # (Keras model, extraction.ClipFeatures, labels, train params) -> the served model's answer for one video;
    # a VidopsError is the client's fault (HTTP 400)
    predict: Callable[[Any, Any, list[str], Any], dict[str, Any]]
    # (name, extract params, train params): a ValueError naming the keys of a combination that cannot work
    check: Callable[[Task, ExtractParams, Any], None] = _any_combination
    # (name, train params): a VidopsError naming the key when a file the params name is not on this machine; the
    # training flow asks before any work, so it must not need TensorFlow
    preflight: Callable[[Task, Any], None] = _nothing_needed
    needs_audio: bool = False  # a clip without audio is quarantined
    min_classes: int = 2  # fewer classes among the accepted clips fails validation
    labelled: bool = True  # the model's classes are the clips' labels: a version of other classes cannot be scored here
    # its clips need captions: the dataset's captions.csv is checked with the clips, and the accepted ones go beside the features
    captioned: bool = False
    demo: str | None = None  # the demo generator's data kind (components.generate) for `vidops demo` and `generate`

    @property
    def fields(self) -> tuple[str, ...]:
        """The shard arrays its model reads of a clip."""
        return ("frames", "audio") if self.needs_audio else ("frames",)

    @property
    def train_params(self) -> type[FitParams]:
        """The task's model of its train.<task> group."""
        return type(self.defaults.train)

    @property
    def source(self) -> Path:
        """The file that defines the task (its train function's module): part of every stage's cache key."""
        return Path(sys.modules[self.train.__module__].__file__ or "")


_SPECS: dict[Task, TaskSpec] = {}


def register(task: TaskSpec) -> TaskSpec:
    """Make `task` known to params.yaml, the stages and the CLI (replacing a spec of its name)."""
    _SPECS[task.name] = task
    return task


def unregister(name: Task) -> None:
    _SPECS.pop(name, None)


def spec(name: Task) -> TaskSpec:
    """The spec of task `name`; an error listing the known tasks when there is none."""
    try:
        return _SPECS[name]
    except KeyError:
        raise VidopsError(f"no task {name!r}; known tasks: {', '.join(_SPECS)}") from None


def specs() -> tuple[TaskSpec, ...]:
    return tuple(_SPECS.values())


def names() -> tuple[Task, ...]:
    return tuple(_SPECS)


# every module of this package is a task that registers itself; imported last, as they import the names above
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

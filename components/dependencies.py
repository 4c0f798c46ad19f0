"""What each stage of the pipeline depends on and leaves, in one table: the stage list itself.

A stage's code is derived, never listed: the modules it runs and every vidops module they import (at the top or inside
a function), and, for a stage that asks the task, the task's spec module and the functions of it the stage calls, with
what they import. Its params keys, the files it reads and the files
it leaves are declared once here. The Prefect cache key (`fingerprint`) and dvc.yaml's stages (`dvc_yaml`, written by
`vidops dvc-yaml`) both come from this table, so they cannot drift apart.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import inspect
import json
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vidops.components.layout import (
    ACCEPTED,
    CAPTIONS_FILE,
    CATALOG,
    CONFUSION,
    INDEX,
    INDEX_TABLE,
    METRICS,
    MODEL_FILE,
    QUARANTINE,
    REPORT,
    Layout,
)
from vidops.components.params import Params, Task

KEY, ITEM = "${key}", "${item}"  # dvc.yaml's foreach: the task, and its dataset's name
MODEL_MODULE = "model"  # a task's module of its Keras model and layers, which loading a saved model imports


@dataclass(frozen=True)
class Output:
    """A file or folder a stage leaves; `whole`, files inside a folder, say the folder is complete (the last
    written)."""

    path: Callable[[Layout, Task], Path]
    kind: str = "outs"  # dvc.yaml's: outs, metrics or plots
    cache: bool = True  # DVC keeps it in its cache (False: git keeps it, as metrics and plots are)
    plot: dict[str, str] | None = None  # dvc.yaml's plot options; {task} stands for the task
    whole: tuple[str, ...] = ()

    def present(self, layout: Layout, task: Task) -> bool:
        path = self.path(layout, task)
        return all((path / name).is_file() for name in self.whole) if self.whole else path.exists()


@dataclass(frozen=True)
class Stage:
    """One stage: the component modules it runs, the functions of the task's spec it calls (None: it asks no task), the
    params keys it reads (`{task}` stands for the task), the files it reads (given the task and its dataset's name)
    and what it leaves."""

    name: str
    runs: tuple[str, ...]  # modules of vidops.components
    uses: tuple[str, ...] | None  # TaskSpec fields; its spec module and flags count whenever it asks the task
    params: tuple[str, ...]
    reads: Callable[[Layout, Task, str], list[Path]]
    leaves: tuple[Output, ...]
    cached: bool = True  # its Prefect task's result is cached by `fingerprint` (the gate reads the registry as it is)


STAGES = (
    Stage(
        "validate",
        ("validation",),
        ("check",),
        ("datasets.{task}", "validation"),
        lambda L, t, d: [L.raw(d)],
        (
            Output(lambda L, t: L.catalog(t) / CATALOG),
            Output(lambda L, t: L.catalog(t) / ACCEPTED),
            # written for every task (no rows for one without captions)
            Output(lambda L, t: L.catalog(t) / CAPTIONS_FILE),
            Output(lambda L, t: L.catalog(t) / QUARANTINE),
            Output(lambda L, t: L.catalog(t) / REPORT, "metrics", cache=False),
        ),
    ),
    Stage(
        "extract",
        ("extraction",),
        None,
        ("datasets.{task}", "extract.{task}"),
        lambda L, t, d: [L.raw(d), L.catalog(t) / ACCEPTED, L.catalog(t) / CAPTIONS_FILE],
        (Output(lambda L, t: L.features(t), whole=(CAPTIONS_FILE, INDEX)),),
    ),
    Stage(
        "train",
        ("training",),
        ("check", "preflight", "train"),
        ("train.{task}",),
        lambda L, t, d: [L.features(t)],
        (
            Output(lambda L, t: L.models(t), whole=(MODEL_FILE,)),
            Output(
                lambda L, t: L.curves(t),
                "plots",
                False,
                {"template": "linear", "x": "epoch", "y": "loss", "title": "{task} training loss"},
            ),
        ),
    ),
    Stage(
        "evaluate",
        ("evaluation",),
        ("check", "evaluate"),
        ("train.{task}",),
        lambda L, t, d: [L.models(t), L.features(t)],
        (
            Output(lambda L, t: L.reports(t) / METRICS, "metrics", cache=False),
            Output(
                lambda L, t: L.reports(t) / CONFUSION,
                "plots",
                False,
                {"template": "confusion", "x": "actual", "y": "predicted"},
            ),
        ),
    ),
    Stage(
        "register",
        ("registry", "serving", "served_model"),
        ("check", "input_example", "predict"),
        ("registry", "datasets.{task}", "extract.{task}", "train.{task}"),
        lambda L, t, d: [L.models(t), L.reports(t) / METRICS, L.catalog(t) / ACCEPTED, L.catalog(t) / REPORT],
        (Output(lambda L, t: L.registration(t), cache=False),),
    ),
    Stage(
        "promote",
        ("promotion",),
        ("check", "evaluate"),
        ("registry", "datasets.{task}", "extract.{task}"),
        lambda L, t, d: [L.registration(t), L.features(t)],
        (Output(lambda L, t: L.promotion(t), cache=False),),
        cached=False,
    ),
)
NAMES = tuple(stage.name for stage in STAGES)
BY_NAME = {stage.name: stage for stage in STAGES}


def stage(name: str) -> Stage:
    return BY_NAME[name]


# --- code: the import closure ---------------------------------------------------------------------------------------


def code(stage: Stage, tasks: Iterable[Any]) -> list[Path]:
    """The files of the stage's code for these task specs: the modules it runs and every vidops module they import, and
    for a stage that asks the task, the task's package and spec module (their top-level imports) and the spec's
    functions the stage calls (what their bodies import)."""
    from vidops.components import tasks as registry

    roots = [f"vidops.components.{module}" for module in stage.runs]
    files = {Path(registry.__file__)}  # the registry that finds the task
    # shallow: modules whose top-level imports alone count (their functions' are others')
    tops, shallow = {"vidops"}, set()
    for task in tasks if stage.uses is not None else ():
        tops.add(task.package.split(".")[0])
        for module in {task.package, task.train.__module__}:
            if (path := _file(module, frozenset(tops))) is not None:
                files.add(path)
                shallow.add(module)
                roots += _imports(path, module, top_level=True)
        for name in stage.uses:
            roots += _function_imports(getattr(task, name))
    found = _closure(tuple(roots), frozenset(tops), frozenset(shallow))
    if any(path.name == "layers.py" for path in found):  # layers.load_model imports the task's model module, by name
        models = tuple(f"{task.package}.{MODEL_MODULE}" for task in tasks if stage.uses is not None)
        found |= _closure(models, frozenset(tops), frozenset(shallow))
    return sorted(files | found)


def _function_imports(function: Any) -> list[str]:
    """The modules a function imports in its body; for one that cannot be read so, its whole module."""
    module = getattr(function, "__module__", None) or ""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):  # a builtin, or a lambda whose line does not parse alone
        return [module]
    return _names(tree, module.rsplit(".", 1)[0])


@functools.cache
def _closure(roots: tuple[str, ...], tops: frozenset[str], shallow: frozenset[str] = frozenset()) -> set[Path]:
    """The files of `roots` and of every module under `tops` that they import, with the packages above them; the
    `shallow` modules are counted already, and not gone into again."""
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name in shallow or (path := _file(name, tops)) is None:
            continue
        seen[name] = path
        todo += _imports(path, name)
        todo += [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]  # its packages run first
    return set(seen.values())


def _file(module: str, tops: frozenset[str]) -> Path | None:
    """The source file of `module` when it is under one of `tops` (vidops, a task's package), found without importing
    it; None for a library's module or a name that is not a module."""
    parts = module.split(".")
    if parts[0] not in tops or module == "vidops":  # vidops's own __init__ is a docstring, and no folder of a project's
        return None
    depth = 2 if parts[0] == "vidops" and len(parts) > 1 else 1  # vidops.components, vidops.flows: each its own folder
    folder = _folder(".".join(parts[:depth]))
    if folder is None:
        return None
    if isinstance(folder, str):  # a module of one file
        return Path(folder) if len(parts) == depth else None
    rest = parts[depth:]
    for candidate in (
        folder.joinpath(*rest, "__init__.py"),
        folder.joinpath(*rest).with_suffix(".py") if rest else None,
    ):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


@functools.cache
def _folder(name: str) -> Path | str | None:
    """A package's folder (a Path), a one-file module's file (a str), or None when there is no such module."""
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if found is None:
        return None
    if found.submodule_search_locations:
        return Path(next(iter(found.submodule_search_locations)))
    return found.origin


def _imports(path: Path, module: str, top_level: bool = False) -> list[str]:
    """Every module name `path` imports (at its top only, or anywhere in it), relative ones resolved against `module`.
    What `if TYPE_CHECKING:` imports does not run, and does not count."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(), str(path))
    return _names(tree, package, top_level)


def _names(tree: ast.AST, package: str, top_level: bool = False) -> list[str]:
    """The module names a syntax tree imports; a name imported from a package (`from vidops.components import inputs`)
    counts as a module too, as it may be one."""
    checking = {id(node) for block in ast.walk(tree) if _type_checking(block) for node in ast.walk(block)}
    nodes = ast.iter_child_nodes(tree) if top_level else ast.walk(tree)
    names: list[str] = []
    for node in nodes:
        if id(node) in checking:
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return names


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


# --- the Prefect cache key -------------------------------------------------------------------------------------------


def param_values(params: Params, keys: tuple[str, ...], task: Task) -> dict[str, Any]:
    """The values of dotted params keys (`train.{task}`), by key."""
    tree, found = params.to_yaml_dict(), {}
    for key in keys:
        node = tree
        for part in key.format(task=task).split("."):
            node = node[part]
        found[key.format(task=task)] = node
    return found


def fingerprint(name: str, layout: Layout, params: Params, task: Task, store: str) -> str:
    """A hash of everything the stage's result depends on: its code, its params, what it reads (for a folder: each
    file's path, size and modification time, as DVC does for large data; extracted features by their index), the
    encoder's weights file of a training, and the MLflow store `store`."""
    from vidops.components import encoders
    from vidops.components.tasks import spec

    found = stage(name)
    digest = hashlib.sha256(f"{name}:{task}:{store}".encode())
    for file in code(found, [spec(task)]):
        _hash_path(digest, file)
    digest.update(json.dumps(param_values(params, found.params, task), sort_keys=True).encode())
    reads = found.reads(layout, task, params.datasets.of(task))
    if name == "train":  # a param that may name no file: DVC sees it through the param only
        reads += filter(None, [encoders.weights_file(params.train.of(task))])
    for path in reads:
        _hash_path(digest, path)
    return digest.hexdigest()


def _hash_path(digest: Any, path: Path) -> None:
    import pandas as pd

    if path.is_dir() and (path / INDEX_TABLE).is_file():  # features: what the clips are, not how this run got them
        index = pd.read_csv(path / INDEX_TABLE, keep_default_na=False)
        digest.update(index[["path", "label", "split", "shard", "status"]].to_csv(index=False).encode())
        if (path / CAPTIONS_FILE).is_file():
            digest.update((path / CAPTIONS_FILE).read_bytes())
    elif path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            stat = file.stat()
            digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    elif path.is_file():
        with path.open("rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    else:
        digest.update(f"missing:{path}".encode())


# --- dvc.yaml --------------------------------------------------------------------------------------------------------

HEADER = """\
# The pipeline as DVC stages, one of each per task (the keys of `datasets` in params.yaml, so `dvc repro` shows
# validate@classification, train@sync, ...). Each runs the same stage function as the Prefect flow on the same layout.
# Written by `vidops dvc-yaml` from components/dependencies.py, which the Prefect cache keys on too: a stage's code
# deps are the modules it runs and what they import, with its task's own. Do not edit by hand; a test compares it.
"""


def dvc_yaml(repository: Path, specs: Iterable[Any]) -> str:
    """dvc.yaml for the checkout at `repository`: a foreach stage per entry of STAGES (its deps the union of its code
    over the task `specs`, a task's own files under components/tasks/${key}/), and the plots of every task's curves."""
    specs = tuple(specs)
    relative = Layout(Path(""))
    stages: dict[str, Any] = {}
    for found in STAGES:
        shared = [p for p in code(found, specs) if not any(p == s.code or s.code in p.parents for s in specs)]
        deps = [str(p) for p in found.reads(relative, KEY, ITEM)] + [_relative(p, repository) for p in shared]
        if found.uses is not None:
            deps += [f"components/tasks/{KEY}{name}" for name in _own_files(found, specs)]
        do: dict[str, Any] = {"cmd": f"vidops stage {found.name} --task {KEY}", "deps": deps}
        do["params"] = [key.replace("{task}", KEY) for key in found.params]
        for output in found.leaves:
            entry: Any = str(output.path(relative, KEY))
            plot = {key: value.format(task=KEY) for key, value in (output.plot or {}).items()}
            options = {**({"cache": False} if not output.cache else {}), **plot}
            do.setdefault(output.kind, []).append({entry: options} if options else entry)
        stages[found.name] = {"foreach": "${datasets}", "do": do}
    # the train stage plots every task's loss; a task that records more curves gets them drawn together here
    curves = {str(relative.curves(s.name)): list(s.curves) for s in specs if tuple(s.curves) != ("loss",)}
    plots = [{"training curves": {"template": "linear", "x": "epoch", "y": curves}}] if curves else []
    for s in specs:  # a task's own plots, their files under reports/<task>/
        for title, plot in s.plots.items():
            y = {str(relative.reports(s.name) / name): columns for name, columns in plot["y"].items()}
            plots.append({title: {**plot, "y": y}})
    return HEADER + yaml.safe_dump({"stages": stages, "plots": plots}, sort_keys=False, width=120)


def _own_files(found: Stage, specs: tuple[Any, ...]) -> list[str]:
    """The stage's code in each task's folder, as one list for foreach: the files by their names in the folder
    ("/train.py", ...) when every task's folder has every one of them, else the folder itself ("")."""
    names: set[str] = set()
    for task in specs:
        names |= {"/" + p.relative_to(task.code).as_posix() for p in code(found, [task]) if task.code in p.parents}
    if all((task.code / name.lstrip("/")).is_file() for task in specs for name in names):
        return sorted(names)
    return [""]  # the tasks' folders differ: each whole


def _relative(path: Path, repository: Path) -> str:
    try:
        return path.relative_to(repository).as_posix()
    except ValueError:
        return path.as_posix()

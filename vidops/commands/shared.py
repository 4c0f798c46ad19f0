"""What several commands share: the project's params and MLflow store, progress bars, a writable project folder."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from vidops.components.errors import VidopsError
from vidops.components.layout import Layout
from vidops.components.params import Params, load_params

if TYPE_CHECKING:  # importing it loads MLflow's client
    from vidops.components.tracking import Tracking

PARAMS_FILE = "params.yaml"
STACK_ENV = "a client of a project's stack finds them in <project>/.vidops/stack/env"


def load(root: Path, params_file: str, overrides: list[str]) -> Params:
    """The project's params; the defaults when the project has no params.yaml and no other file was named."""
    path = root / params_file
    if params_file == PARAMS_FILE and not path.exists():
        return load_params(None, overrides)
    return load_params(path, overrides)


def registry(root: Path) -> Tracking:
    """The project's MLflow; the embedded store only when a run has made it (no empty store made by asking)."""
    from vidops.components import tracking

    found = tracking.locate(Layout(root.resolve()))
    store = Path(found.uri.removeprefix("sqlite:///"))
    if found.uri.startswith("sqlite:///") and not store.is_file():
        raise VidopsError(f"{store}: no MLflow store; `vidops demo` or `vidops run` makes it")
    return found


@contextmanager
def progress_bar(unit: str) -> Iterator[Callable[[int, int], None]]:
    """A progress callback (done, total) drawn as a bar on stderr."""
    from tqdm import tqdm

    bar = tqdm(unit=unit, file=sys.stderr, disable=None)  # None: no bar when stderr is not a terminal (a log, CI)
    try:
        yield lambda done, total: (setattr(bar, "total", total), bar.update(done - bar.n))
    finally:
        bar.close()


def ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".vidops-write-check-{id(folder)}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise VidopsError(f"{folder}: the workdir is not writable: {exc.strerror}") from None


def start_prefect(layout: Layout, params_file: str) -> str | None:
    """Point Prefect at the project's services (before it is imported); the params file a flow takes (None: the
    defaults, as `load` reads them)."""
    from vidops.stack.profiles import activate

    activate(layout)
    return params_file if (layout.root / params_file).exists() else None

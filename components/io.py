"""Atomic writes (an output appears whole under its final name, or not at all), and shard reads."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; rename it onto `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any, secret: bool = False) -> None:
    """`data` as JSON, atomically; a `secret` file is readable by its owner alone from the moment it exists."""
    with atomic_path(path) as tmp:
        write_text(tmp, json.dumps(data, indent=2, sort_keys=True) + "\n", secret)


def write_text(path: Path, text: str, secret: bool = False) -> None:
    """`text` to `path`; a `secret` file is made mode 600 before a byte is written (never 644 for a moment)."""
    if not secret:
        path.write_text(text)
        return
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(text)


def write_csv(path: Path, frame: Any) -> None:
    """Write a pandas DataFrame as CSV, atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


# numpy parses each .npy header with ast.literal_eval, and CPython 3.11's compiler is not safe across threads (it can
# fail with "SystemError: AST constructor recursion depth mismatch"): shards are opened one thread at a time.
_NPZ_LOCK = threading.Lock()


def read_arrays(path: Path | str, fields: Iterable[str]) -> dict[str, Any]:
    """The named arrays of an .npz file (KeyError for a missing one)."""
    import numpy as np

    with _NPZ_LOCK, np.load(path) as data:
        return {field: data[field] for field in fields}


def records(frame: Any, columns: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The rows of a pandas DataFrame (its `columns`, default all) as dicts of plain Python values, for a loop over
    rows: column by column, where itertuples and to_dict("records") box each value one at a time, which is slow with
    pandas 3's Arrow strings (measured: benchmarks/README.md)."""
    names = list(frame.columns if columns is None else columns)
    values = [frame[name].tolist() for name in names]
    # every column has the frame's length, and every row one value per name
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]

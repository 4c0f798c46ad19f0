"""One way to spread batches of work: a `Mapper` calls a function on each argument tuple and yields the results in
order.

Components take a Mapper and default to a local pool; the Prefect flow hands them one that
runs each call as a task run on its task runner (threads or Dask, `flows/runners.py`).
The function must be a plain top-level one: a process or a Dask worker receives it pickled.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

# (function, calls, workers) -> results
Mapper = Callable[[Callable[..., Any], list[tuple[Any, ...]], int], Iterator[Any]]


def in_processes(function: Callable[..., Any], calls: list[tuple[Any, ...]], workers: int) -> Iterator[Any]:
    """Spawned processes (not forked: the caller may hold threads, Prefect's, that a fork would copy mid-flight)."""
    if workers == 1 or len(calls) <= 1:
        return in_this_process(function, calls, workers)
    return _pool(
        ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")), function, calls
    )


def in_this_process(function: Callable[..., Any], calls: list[tuple[Any, ...]], workers: int) -> Iterator[Any]:
    """One call after another, here: for work smaller than a pool's start."""
    return (function(*args) for args in calls)


def in_threads(function: Callable[..., Any], calls: list[tuple[Any, ...]], workers: int) -> Iterator[Any]:
    """Threads: for work that waits on files or releases the GIL (PyAV does)."""
    return _pool(ThreadPoolExecutor(max_workers=max(1, workers)), function, calls)


def _pool(executor: Executor, function: Callable[..., Any], calls: list[tuple[Any, ...]]) -> Iterator[Any]:
    with executor:
        yield from executor.map(function, *zip(*calls, strict=True)) if calls else iter(())

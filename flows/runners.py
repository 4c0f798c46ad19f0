"""How the flow spreads probing's and extraction's batches of clips, as params.yaml's `runner` says.

processes: the components' own pools (spawned processes for extraction, threads for
probing), what `dvc repro` uses too. A Prefect process pool would start a temporary API
server in every process under the embedded profile, each slow to start, all writing one
sqlite database.
threads and dask: a Prefect task runner, each batch a task run (`probe-batch`,
`extract-batch`) that the UI shows; dask on a local Dask cluster it starts, or on the
existing scheduler at `runner.address` (whose workers need vidops installed, and a Prefect
server to report to).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

from prefect import task

from vidops.components.errors import VidopsError
from vidops.components.parallel import Mapper
from vidops.components.params import RunnerParams

log = logging.getLogger("vidops")
REPORT_TIMEOUT_S = 60  # the most a Dask worker waits to send its queued task run states and logs


def task_runner(runner: RunnerParams, workers: int) -> Any:
    """A fresh Prefect task runner for threads or dask, with `workers` workers (a local Dask cluster's too)."""
    if runner.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if runner.address:
        _answers(runner.address)
        return DaskTaskRunner(address=runner.address)
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}
    )


def mapper(runner: RunnerParams) -> Mapper | None:
    """A components Mapper that runs each call as a Prefect task run (`extract-batch`, `probe-batch`) on the runner
    `runner` names; None for processes (the component's own pool)."""
    if runner.kind == "processes":
        return None

    def run(function: Callable[..., Any], calls: list[tuple[Any, ...]], workers: int) -> Iterator[Any]:
        if not calls:  # a re-run with nothing new starts no task runner (a local Dask cluster takes seconds)
            return
        names = list(inspect.signature(function).parameters)
        with task_runner(runner, workers) as pool:
            try:
                futures = [pool.submit(_as_task(function), dict(zip(names, args, strict=True))) for args in calls]
                for future in futures:
                    yield future.result()
            finally:
                if runner.kind == "dask" and not runner.address:  # a scheduler's own workers live on and send theirs
                    for worker, failed in pool.client.run(_send_reports, on_error="return").items():
                        if isinstance(failed, Exception):
                            log.warning(
                                "Dask worker %s could not send its task run states to Prefect: %s", worker, failed
                            )

    return run


@cache
def _as_task(function: Callable[..., Any]) -> Any:
    name = function.__name__.replace("_", "-")  # extract_batch -> extract-batch
    return task(function, name=name, task_run_name=name, cache_policy=None, persist_result=False)


async def _send_reports() -> None:
    """Send what this Dask worker still holds for the Prefect API. A task run's states travel as queued events, and a
    local cluster's close kills a busy worker before its exit hook sends them, which would leave its task runs RUNNING
    in the API."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (EventsWorker, APILogWorker):
        await service.drain_all(timeout=REPORT_TIMEOUT_S, at_exit=False)


def _answers(address: str) -> None:
    """A Dask scheduler answers at `address`, or a VidopsError that says what to fix."""
    from distributed import Client

    try:
        Client(address, timeout="10s").close()
    except (OSError, TimeoutError) as exc:
        raise VidopsError(
            f"runner.address: the Dask scheduler at {address} does not answer ({exc}); "
            "start it, or leave the address out for a local cluster"
        ) from None

"""How the flow spreads extraction's batches of clips, as params.yaml's `runner` says.

processes: extraction's own pool of spawned processes (what `dvc repro` uses too). A Prefect
process pool would start a temporary API server in every process under the embedded
profile, about 5 s each, all writing one sqlite database.
threads and dask: a Prefect task runner, each batch a task run `extract-batch` that the UI
shows; dask on a local Dask cluster it starts, or on the existing scheduler at
`runner.address` (whose workers need vidops installed, and a Prefect server to report to).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prefect import task

from components import extraction
from components.errors import VidopsError
from components.params import ExtractParams, RunnerParams

extract_batch = task(extraction.extract_batch, name="extract-batch", task_run_name="extract-batch", cache_policy=None, persist_result=False)


def task_runner(runner: RunnerParams, workers: int) -> Any:
    """A fresh Prefect task runner for threads or dask, with `workers` workers (a local Dask cluster's too)."""
    if runner.kind == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if runner.address:
        _answers(runner.address)
        return DaskTaskRunner(address=runner.address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None})


def fan_out(runner: RunnerParams) -> extraction.MapBatches | None:
    """extraction's MapBatches through a Prefect task runner, one `extract-batch` task run per batch; None for processes."""
    if runner.kind == "processes":
        return None

    def run(batches: list[list[extraction.ClipJob]], params: ExtractParams, shard_dir: str) -> Iterator[list[dict[str, Any]]]:
        with task_runner(runner, params.workers) as pool:
            futures = [pool.submit(extract_batch, {"jobs": batch, "params": params, "shard_dir": shard_dir}) for batch in batches]
            for future in futures:
                yield future.result()

    return run


def _answers(address: str) -> None:
    """A Dask scheduler answers at `address`, or a VidopsError that says what to fix."""
    from distributed import Client

    try:
        Client(address, timeout="10s").close()
    except (OSError, TimeoutError) as exc:
        raise VidopsError(f"runner.address: the Dask scheduler at {address} does not answer ({exc}); start it, or leave the address out for a local cluster") from None

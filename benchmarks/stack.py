"""`vidops bench stack`: many flow runs at once against the stack, with Prefect and MLflow on PostgreSQL, then on
SQLite.

Each store gets a stack of its own (`vidops stack up`, two process workers) and the same load: `runs` flow runs of
`stack_load` submitted together, each validating and extracting a small generated dataset in a project folder of its
own, its probing and extraction batches as task runs on a local Dask cluster (params.yaml's runner: dask). It prints,
per store, the flow runs completed, the task runs the API recorded, and the database errors the servers and workers
logged; the same `load` is the production profile's test (tests/test_production.py).
"""

from __future__ import annotations

import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from prefect import flow
from prefect.cache_policies import NO_CACHE

from vidops.components.layout import Layout
from vidops.components.params import Task, load_params
from vidops.flows import pipeline
from vidops.stack import services as stack
from vidops.stack.folders import folder
from vidops.stack.processes import _free_port

TASK: Task = "classification"
# a small dataset, in batches so that each flow run makes several task runs on Dask
OVERRIDES = [
    "runner.kind=dask",
    "generate.classification.clips_per_class=2",
    "generate.classification.size=48",
    "generate.classification.duration_s=1.0",
    "extract.classification.size=32",
    "extract.classification.frames=4",
    "extract.classification.batch_size=4",
    "extract.classification.workers=1",
    "validation.probe_workers=1",
]
ENTRYPOINT = "vidops.benchmarks.stack.stack_load"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
SETTLE_S = 60  # the most the load waits, after its flow runs end, for their task runs' last states to be recorded
# what a store says when it cannot keep up: SQLite's lock, and any database error SQLAlchemy or asyncpg reports
DATABASE_ERROR = re.compile(
    r"database is locked|OperationalError|InterfaceError|DBAPIError|TooManyConnections|deadlock detected"
)


@flow(name="stack-load")
def stack_load(root: str, overrides: list[str]) -> None:
    """Validate and extract the project at `root`'s classification clips, each stage a task run, their batches on
    Dask."""
    layout, params = pipeline.load_project(root, None, overrides)
    uncached = {"cache_policy": NO_CACHE, "persist_result": False}
    pipeline.validate.with_options(task_run_name="validate", **uncached)(layout, params, TASK)
    pipeline.extract.with_options(task_run_name="extract", **uncached)(layout, params, TASK)


@dataclass
class Load:
    """What one store made of the load."""

    store: str
    runs: dict[str, str] = field(default_factory=dict)  # flow run id -> final state
    # flow run id -> task run states, as the API recorded them
    task_runs: dict[str, Counter] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # the stack's log lines naming a database error during the load
    seconds: float = 0.0

    @property
    def completed(self) -> int:
        return sum(state == "COMPLETED" for state in self.runs.values())

    def line(self) -> str:
        recorded = sorted(sum(c.values()) for c in self.task_runs.values())
        return (
            f"{self.store:10} {self.completed}/{len(self.runs)} flow runs completed, task runs recorded per run "
            f"{recorded[0] if recorded else 0}-{recorded[-1] if recorded else 0}, "
            f"{len(self.errors)} log lines of database errors, {self.seconds:.0f} s"
        )


def projects(workdir: Path, runs: int) -> list[Path]:
    """`runs` project folders, each with its own copy of the small dataset (generated once into the workdir)."""
    from vidops.components.generate import MARKER, generate_dataset

    params = load_params(None, OVERRIDES)
    source = Layout(workdir.resolve() / "data-source")
    dataset = source.raw(params.datasets.of(TASK))
    if not (dataset / MARKER).is_file():
        generate_dataset(dataset, TASK, params.generate.of(TASK))
    roots = []
    for n in range(runs):
        root = workdir.resolve() / f"run-{n}"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(source.root / "data", root / "data")
        roots.append(root)
    return roots


def load(layout: Layout, roots: list[Path], timeout_s: float = 900) -> Load:
    """Submit one `stack_load` run per root at once to the stack that is up for `layout`, wait for all, and collect what
    the API recorded and the database errors logged meanwhile."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    logs = sorted((folder(layout) / "logs").glob("*.log"))
    offsets = {path: path.stat().st_size for path in logs}
    result = Load(store="")
    start = time.monotonic()
    env = stack.client_env(layout)
    settings = {PREFECT_API_URL: env["PREFECT_API_URL"], PREFECT_API_AUTH_STRING: env["PREFECT_API_AUTH_STRING"]}
    with temporary_settings(settings), get_client(sync_client=True) as client:
        flow_id = client.create_flow(stack_load)
        deployment = client.create_deployment(flow_id, "load", entrypoint=ENTRYPOINT, work_pool_name=stack.POOL)
        ids = [
            client.create_flow_run_from_deployment(
                deployment, parameters={"root": str(root), "overrides": OVERRIDES}
            ).id
            for root in roots
        ]
        deadline = time.monotonic() + timeout_s
        while True:
            states = {str(i): client.read_flow_run(i).state_type.value for i in ids}
            if all(state in FINAL for state in states.values()) or time.monotonic() > deadline:
                break
            time.sleep(2)
        result.seconds = time.monotonic() - start
        result.runs = states
        # the server records task run states from events, a moment after the flow run ends: wait for them to settle
        settle = time.monotonic() + SETTLE_S
        while True:
            for i in ids:
                found = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[i])))
                result.task_runs[str(i)] = Counter(run.state_type.value for run in found if run.state_type)
            if all(set(c) <= set(FINAL) for c in result.task_runs.values()) or time.monotonic() > settle:
                break
            time.sleep(2)
    for path in logs:
        with path.open("rb") as lines:
            lines.seek(offsets[path])
            said = lines.read().decode(errors="replace").splitlines()
        result.errors += [f"{path.name}: {line.strip()}" for line in said if DATABASE_ERROR.search(line)]
    return result


def run(workdir: Path, runs: int, database: str) -> list[Load]:
    """The load against a stack on PostgreSQL (`database`: postgresql://USER@HOST:PORT, databases of a fresh prefix,
    dropped afterwards) and then against one on SQLite, each in a project folder of its own under `workdir`."""
    import secrets

    from vidops.stack.postgres import Database

    postgres = Database.parse(f"{database.rstrip('/')}/vidops_bench_{secrets.token_hex(3)}")
    done = []
    for store, db in (("postgresql", postgres), ("sqlite", None)):
        layout = Layout(workdir.resolve() / f"stack-{store}")
        shutil.rmtree(layout.root, ignore_errors=True)
        layout.root.mkdir(parents=True)
        ports = stack.Ports(*(_free_port() for _ in range(3)))
        # fresh copies: a store's load must not find the other's shards
        roots = projects(workdir / f"load-{store}", runs)
        try:
            stack.up(layout, ports, db, workers=2)
            result = load(layout, roots)
        finally:
            stack.down(layout)
            if db:
                db.drop()
        result.store = store
        done.append(result)
    return done


def report(loads: list[Load]) -> str:
    """One line per store, and PostgreSQL's time against SQLite's (the anchor) for the same load."""
    lines = [load.line() for load in loads]
    by_store = {load.store: load for load in loads}
    if {"postgresql", "sqlite"} <= set(by_store):
        lines.append(f"postgresql / sqlite time: {by_store['postgresql'].seconds / by_store['sqlite'].seconds:.2f}")
    return "\n".join(lines)

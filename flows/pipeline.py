"""The Prefect flows: `training_pipeline` (for each task, validate -> extract -> train -> evaluate -> register,
then `promotion`) and `promotion` (the gate, which a person can also run alone).

Each Prefect task runs a stage of `components.stages` (the functions `vidops stage` runs for DVC), under the stage's
name; the flow bodies only wire them.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, runtime, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.states import State
from prefect.tasks import exponential_backoff

from vidops.components import stages, tracking, versioning
from vidops.components.errors import VidopsError
from vidops.components.evaluation import Evaluation
from vidops.components.extraction import FeatureSet
from vidops.components.layout import Layout
from vidops.components.parallel import Mapper
from vidops.components.params import Params, Task, load_params
from vidops.components.promotion import Decision
from vidops.components.registry import Registration
from vidops.components.tasks import spec
from vidops.components.validation import ValidationSummary
from vidops.flows.runners import mapper
from vidops.stack.profiles import registry_lock


def _send_vidops_logs_to_prefect() -> None:
    """vidops's own messages (stages, epochs, the gate) go to the Prefect run's logs, as PREFECT_LOGGING_EXTRA_LOGGERS
    would send them, whichever process imported Prefect first (the CLI, a worker's flow run, a test)."""
    vidops = stages.log
    vidops.setLevel(logging.INFO)
    vidops.propagate = False  # the terminal shows progress bars and the summary; the run's logs hold the rest
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in vidops.handlers:
            vidops.addHandler(handler)


_send_vidops_logs_to_prefect()


def transient(task: Any, task_run: Any, state: State) -> bool:
    """Retry what the network did (a server down or overloaded, a timeout), never what the code or the data did."""
    from mlflow.exceptions import MlflowException

    try:
        state.result()
    # the disk's answer: the same next time
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        return False
    except OSError:  # connection refused or reset, timeouts: requests' errors are OSErrors too
        return True
    except MlflowException as exc:  # MLflow's client already retried the request itself
        return (
            exc.error_code in ("TEMPORARILY_UNAVAILABLE", "RESOURCE_EXHAUSTED") or "Max retries exceeded" in exc.message
        )
    except Exception:
        return False
    return False


# Tasks that talk to MLflow (and its S3) retry a transient failure with exponential backoff and jitter;
# pure compute does not retry: the same input fails the same way.
NETWORK = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=10),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": transient,
}


def _inputs_and_code(stage: str) -> Any:
    """A cache key of the stage's code, params and input files (stages.fingerprint), never of the run."""
    return lambda context, inputs: stages.fingerprint(stage, inputs["layout"], inputs["params"], inputs["task"])


def _stage(stage: str, function: Any = None, **options: Any) -> Any:
    """The stage (its function, or `function` wrapping it) as a Prefect task run `<stage>-<task>`, its result persisted
    and cached by `stages.fingerprint`."""
    run = _logged(function or stages.STAGES[stage], stage)
    return task(
        run,
        name=stage,
        cache_key_fn=_inputs_and_code(stage),
        persist_result=True,
        task_run_name=f"{stage}-{{task}}",
        **options,
    )


def _logged(function: Any, stage: str) -> Any:
    """`function` with its start and its result's summary in the `vidops` log (the run's logs in the Prefect UI)."""

    @functools.wraps(function)
    def run(layout: Layout, params: Params, task: Task, *args: Any) -> Any:
        stages.log.info("%s %s: started", stage, task)
        result = function(layout, params, task, *args)
        stages.log.info("%s %s: %s", stage, task, stages.summary(result, layout.root, params.registry.of(task).metric))
        return result

    return run


def _extract_with_progress(layout: Layout, params: Params, task: Task) -> FeatureSet:
    """The extract stage, its batches spread by params.yaml's runner, with its progress shown in the Prefect UI."""
    progress = _progress(f"extraction-progress-{task}", f"{task}: clips extracted")
    return stages.extract(layout, params, task, progress, *_spread(params))


def _train_with_progress(layout: Layout, params: Params, task: Task) -> Any:
    """The train stage, its MLflow run named after the task and the flow run, its epochs shown in the Prefect UI."""
    progress = _progress(f"training-progress-{task}", f"{task}: epochs trained")
    return stages.train(layout, params, task, progress, run_name=f"{task}-{runtime.flow_run.name}")


def _progress(key: str, what: str) -> stages.Progress:
    """A progress callback (done, of) drawn as a Prefect progress artifact, and as a bar on a terminal's stderr."""
    from tqdm import tqdm

    artifact = create_progress_artifact(0.0, key=key, description=f"{what} (%)")
    # disable=None: no bar when stderr is not a terminal
    bar = tqdm(desc=what, file=sys.stderr, disable=None, leave=False)

    def update(done: int, total: int) -> None:
        update_progress_artifact(artifact, 100 * done / total)
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def _validate_on_runner(layout: Layout, params: Params, task: Task) -> ValidationSummary:
    """The validate stage, its probing batches spread by params.yaml's runner."""
    return stages.validate(layout, params, task, *_spread(params))


def _promote_locked(layout: Layout, params: Params, task: Task, version: str | None = None) -> Decision:
    """The gate, holding the model's lock where the profile keeps it (a Prefect concurrency limit on a shared store)."""
    return stages.promote(layout, params, task, version, registry_lock)


def _spread(params: Params) -> tuple[Mapper, ...]:
    """The runner's Mapper as an optional argument: none for processes, so the stage keeps its own pool."""
    found = mapper(params.runner)
    return (found,) if found else ()


# one Prefect task per stage, called by the stage's name (`validate.fn` is the stage's plain function)
validate = _stage("validate", _validate_on_runner)
extract = _stage("extract", _extract_with_progress)
train = _stage("train", _train_with_progress)
evaluate = _stage("evaluate")
register = _stage("register", **NETWORK)
# the gate reads the registry as it is now (a person may have promoted by hand): never from the cache
promote = task(
    _logged(_promote_locked, "promote"),
    name="promote",
    cache_policy=NO_CACHE,
    task_run_name="promote-{task}",
    **NETWORK,
)


def _cached(stage_task: Any, stage: str, layout: Layout, task: Task, refresh: bool, storage: Any) -> Any:
    """`stage_task` with its results kept in the profile's result storage; run afresh (and its result stored
    again) when asked to, or when the files it leaves are missing."""
    fresh = refresh or not stages.outputs_present(stage, layout, task)
    return stage_task.with_options(refresh_cache=fresh, result_storage=storage)


@dataclass(frozen=True)
class TaskResult:
    summary: ValidationSummary
    evaluation: Evaluation
    registration: Registration
    decision: Decision


@dataclass(frozen=True)
class PipelineResult:
    tasks: dict[str, TaskResult]
    tracking_uri: str
    # what went to dvc.lock and git's index for a baseline commit; None: dvc.lock not updated
    staged: list[str] | None = None


@flow(name="training_pipeline")
def training_pipeline(
    root: str = ".", params_file: str | None = "params.yaml", overrides: list[str] | None = None, refresh: bool = False
) -> PipelineResult:
    """Train, evaluate and register the models (`tasks` in params.yaml) of the project at `root`, then gate them.

    `params_file` is relative to `root` (None: the defaults); `overrides` are `KEY.PATH=VALUE` strings.
    A stage whose code, params and input files are unchanged reuses its cached result, unless `refresh`.
    """
    layout, params = load_project(root, params_file, overrides)
    for name in params.tasks:  # before any work: a missing dataset or weights file fails the run at once
        stages.dataset(layout, params, name)
        spec(name).preflight(name, params.train.of(name))

    done, storage = {}, results_storage(layout)
    for name in params.tasks:
        summary = _cached(validate, "validate", layout, name, refresh, storage)(layout, params, name)
        dataset = params.datasets.of(name)
        create_table_artifact(
            summary.table(),
            key=f"validation-summary-{name}",
            description=f"clips of {dataset}: see {summary.quarantine}",
        )
        _cached(extract, "extract", layout, name, refresh, storage)(layout, params, name)
        _cached(train, "train", layout, name, refresh, storage)(layout, params, name)
        scores = _cached(evaluate, "evaluate", layout, name, refresh, storage)(layout, params, name)
        run_tag = {"vidops.prefect_flow_run_id": str(runtime.flow_run.id)}
        registered = _cached(register, "register", layout, name, refresh, storage)(layout, params, name, run_tag)
        done[name] = (summary, scores, registered)

    decisions = promotion(root, params_file, overrides, {name: r.version for name, (_, _, r) in done.items()}, params)
    staged = record_dvc_lock(layout, params, params_file, overrides)
    result = PipelineResult(
        {name: TaskResult(*done[name], decisions[name]) for name in done}, tracking.locate(layout).uri, staged
    )
    create_markdown_artifact(report(result), key="training-report", description="vidops training run")
    return result


@task(cache_policy=NO_CACHE, task_run_name="record-dvc-lock")
def record_dvc_lock(
    layout: Layout, params: Params, params_file: str | None, overrides: list[str] | None
) -> list[str] | None:
    """Tell DVC what this run produced (dvc.lock), so `dvc status` is clean and `dvc repro` has nothing to do; only when
    the run read exactly what `dvc repro` reads: the project's dvc.yaml and params.yaml, without overrides."""
    why_not = (
        "the project has no dvc.yaml"
        if not (layout.root / "dvc.yaml").is_file() or not versioning.is_repo(layout.root)
        else f"this run's overrides ({', '.join(overrides)}) are not in params.yaml"
        if overrides
        else f"this run read {params_file}, dvc.yaml reads params.yaml"
        if params_file != "params.yaml"
        else None
    )
    if why_not:
        stages.log.info("dvc.lock not updated: %s", why_not)
        return None
    targets = [f"{stage}@{name}" for name in params.tasks for stage in stages.STAGES]
    try:
        staged = versioning.record_pipeline(layout.root, targets)
    except VidopsError as exc:  # the models are trained and gated; DVC is told later, by `dvc commit` or `dvc repro`
        stages.log.warning("dvc.lock not updated: %s", exc)
        return None
    stages.log.info("dvc.lock records %s; staged in git: %s", ", ".join(targets), ", ".join(staged) or "nothing")
    return staged


@flow(name="promotion")
def promotion(
    root: str = ".",
    params_file: str | None = "params.yaml",
    overrides: list[str] | None = None,
    versions: dict[str, str | None] | None = None,
    params: Params | None = None,
) -> dict[str, Decision]:
    """Gate each task's challenger (or the version `versions` names for the task) against its champion, on the
    project's test clips; the decision and both scores go to the flow's artifacts and the version's tags.
    `params`: the training run's, as it read them (None: read `params_file` with `overrides`)."""
    if params is None:
        layout, params = load_project(root, params_file, overrides)
    else:
        layout = Layout(Path(root).resolve())
    decisions = {}
    for name, version in (versions or dict.fromkeys(params.tasks)).items():
        decisions[name] = promote(layout, params, name, version)
        create_markdown_artifact(
            promotion_report(decisions[name]), key=f"promotion-{name}", description=f"{name}: the gate's decision"
        )
    return decisions


def results_storage(layout: Layout) -> Any:
    """Where Prefect keeps task results for the cache: VIDOPS_RESULTS (an s3:// URL in the stack profile, saved as
    the block `vidops-results`; the S3 endpoint and keys come from the environment), else `.vidops/results/`."""
    location = os.environ.get("VIDOPS_RESULTS")
    if not location or "://" not in location:
        return Path(location or layout.state / "results")
    from prefect.filesystems import RemoteFileSystem

    storage = RemoteFileSystem(basepath=location)
    storage.save("vidops-results", overwrite=True)  # Prefect keeps a task's result storage server-side
    return storage


def load_project(root: str, params_file: str | None, overrides: list[str] | None) -> tuple[Layout, Params]:
    """A flow's project folder and its params (`params_file` relative to it; None: the defaults)."""
    layout = Layout(Path(root).resolve())
    return layout, load_params(layout.root / params_file if params_file else None, overrides or ())


def report(result: PipelineResult) -> str:
    """The run's markdown summary, for the Prefect UI."""
    lines = ["# vidops training run"]
    for name, r in result.tasks.items():
        s, g = r.summary, r.registration
        lines += [
            f"## {name}",
            f"- clips: {s.clips}: {s.accepted} accepted ({s.warned} with warnings), "
            f"{s.quarantined} quarantined (`{s.quarantine}`)",
            f"- {spec(name).headline(r.evaluation.metrics)}",
            f"- model: `{g.model_name}` version {g.version}, MLflow run `{g.run_id}` in `{result.tracking_uri}`",
            f"- champion: {'yes' if r.decision.champion else 'no'}: {r.decision.reason}",
        ]
        if r.evaluation.samples_path and r.evaluation.samples_path.is_file():
            lines += [
                "",
                f"Test clips and what the model said (`{r.evaluation.samples_path}`):",
                "",
                r.evaluation.samples_path.read_text(),
            ]
    return "\n".join(lines)


def promotion_report(d: Decision) -> str:
    """The gate's decision as markdown, for the Prefect UI."""
    score = lambda value: "" if value is None else f"{value:.4f}"
    lines = [
        f"# {d.model_name} v{d.version}: {d.decision}",
        "",
        d.reason,
        "",
        f"| | version | {d.metric} on the same test clips |",
        "|---|---|---|",
        f"| challenger | v{d.version} | {score(d.score)} |",
    ]
    if d.champion_version:
        lines.append(f"| champion before | v{d.champion_version} | {score(d.champion_score)} |")
    return "\n".join(lines)

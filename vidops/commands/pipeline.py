"""`vidops demo`, `run`, `stage`, `generate` and `dvc-yaml`: the pipeline, whole through Prefect or a stage at a
time."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vidops.commands.shared import PARAMS_FILE, ensure_writable, load, progress_bar, registry, start_prefect
from vidops.components import dependencies, tasks
from vidops.components.errors import VidopsError
from vidops.components.layout import Layout
from vidops.components.params import Params, dump_params, load_params

if TYPE_CHECKING:  # importing them starts Prefect
    from vidops.components.versioning import DatasetVersion
    from vidops.flows.pipeline import PipelineResult


def add(
    commands: Any, project: argparse.ArgumentParser, params: argparse.ArgumentParser, overrides: argparse.ArgumentParser
) -> None:
    demo = commands.add_parser(
        "demo",
        parents=[project, overrides],
        help="generate a dataset and run the whole pipeline on the embedded profile",
    )
    demo.add_argument("--refresh", action="store_true", help="run every stage again, ignoring cached results")
    demo.set_defaults(handler=demo_pipeline, stack_env=False, models=True)  # the embedded profile, whatever is up

    run = commands.add_parser(
        "run",
        parents=[project, params, overrides],
        help="run a Prefect flow: the training pipeline (default), the promotion gate alone, or ingest",
    )
    run.add_argument(
        "flow", nargs="?", choices=["training_pipeline", "promotion", "ingest"], default="training_pipeline"
    )
    run.add_argument(
        "--task",
        choices=tasks.names(),
        help="promotion: gate this task's model only (default: every task in params.yaml)",
    )
    run.add_argument("--version", help="promotion: the version to gate (default: the challenger); needs --task")
    run.add_argument(
        "--refresh", action="store_true", help="training_pipeline: run every stage again, ignoring cached results"
    )
    run.set_defaults(handler=run_flow, models=True)

    stage = commands.add_parser(
        "stage",
        parents=[project, params, overrides],
        help="run one pipeline stage without Prefect (what dvc.yaml calls)",
    )
    stage.add_argument("name", choices=dependencies.NAMES)
    stage.add_argument("--task", choices=tasks.names(), required=True)
    stage.set_defaults(handler=run_stage, models=True)

    generate = commands.add_parser(
        "generate", parents=[project, params], help="write a task's demo dataset of real H.264/AAC MP4 clips"
    )
    generate.add_argument("dir", type=Path)
    generate.add_argument(
        "--task",
        choices=[t.name for t in tasks.specs() if t.generate],
        help="default: the first in params.yaml's tasks",
    )
    generate.add_argument("--clips-per-class", type=int, help="default: generate.<task>.clips_per_class")
    generate.add_argument("--seed", type=int, help="default: generate.<task>.seed")
    generate.set_defaults(handler=generate_demo)

    dvc_yaml = commands.add_parser(
        "dvc-yaml",
        parents=[project],
        help="write dvc.yaml's stages from the stages' code, params and files (--check: compare)",
    )
    dvc_yaml.add_argument(
        "--check", action="store_true", help="exit 1, writing nothing, when dvc.yaml is not what it would write"
    )
    dvc_yaml.set_defaults(handler=write_dvc_yaml)


def demo_pipeline(args: argparse.Namespace) -> None:
    from vidops.components import versioning
    from vidops.components.generate import MARKER, generate_dataset
    from vidops.components.io import atomic_path
    from vidops.stack.seaweedfs import project_store

    layout = Layout(args.root.resolve())
    ensure_writable(layout.root)
    params = load(layout.root, PARAMS_FILE, args.overrides)
    params_path = layout.root / PARAMS_FILE
    if not params_path.exists():  # spelled out for the user to edit and re-run
        with atomic_path(params_path) as tmp:
            tmp.write_text(dump_params(load_params(None)))
    for task in params.tasks:
        dataset = layout.raw(params.datasets.of(task))
        if (dataset / MARKER).is_file():
            print(f"using the demo {task} dataset already in {dataset}")
        else:
            print(f"generating the demo {task} dataset in {dataset} ...")
            generate_dataset(dataset, task, params.generate.of(task))
    for version in version_datasets(layout, params):  # DVC, pushed to the project's own S3 (.vidops/s3/)
        print(
            f"versioned {version.path.relative_to(layout.root)} as {version.md5} ({version.files} files), "
            "pushed to the DVC remote"
        )
    result = _training_pipeline(layout, PARAMS_FILE, args.overrides, args.refresh)
    # dvc.lock records the run: its outputs go to the remote too, so a clone can `dvc pull` them
    if result.staged is not None:
        with project_store(layout):
            versioning.push(layout.root, [])
        remote = versioning.remote_url(layout.root)
        print(
            f"\nDVC:              dvc.lock records this run (`dvc status` is clean); its outputs are pushed to {remote}"
        )
        if result.staged:
            print(
                "baseline:         git commit -m 'vidops demo: datasets, dvc.lock, metrics'  "
                f"({len(result.staged)} files staged)"
            )


def version_datasets(layout: Layout, params: Params) -> list[DatasetVersion]:
    """`dvc add` each task's dataset and push the versions to the remote (the project's own S3 unless set elsewhere)."""
    from vidops.components import versioning
    from vidops.stack.seaweedfs import project_store

    versioning.init(layout.root)
    with project_store(layout):
        versions = [versioning.add(layout.root, layout.raw(params.datasets.of(task))) for task in params.tasks]
        versioning.push(layout.root, [v.dvc_file for v in versions])
    return versions


def run_flow(args: argparse.Namespace) -> None:
    layout = Layout(args.root.resolve())
    params = load(layout.root, args.params, args.overrides)  # fail fast, before Prefect starts
    if args.flow == "training_pipeline":
        _training_pipeline(layout, args.params, args.overrides, args.refresh)
        return
    if args.flow == "ingest":
        _ingest(layout, args.params, args.overrides)
        return
    if args.version and not args.task:
        raise VidopsError("--version names a version of one model: add --task")
    registry(layout.root)
    present = start_prefect(layout, args.params)
    from vidops.flows.pipeline import promotion

    chosen = [args.task] if args.task else params.tasks
    for task, decision in promotion(
        str(layout.root), present, args.overrides, {task: args.version for task in chosen}
    ).items():
        print(f"{task}: {decision.model_name} version {decision.version}: {decision.decision}: {decision.reason}")


def _ingest(layout: Layout, params_file: str, overrides: list[str]) -> None:
    present = start_prefect(layout, params_file)
    from vidops.components import versioning
    from vidops.flows.ingest import ingest
    from vidops.stack.seaweedfs import project_store

    versioning.init(layout.root)
    with project_store(layout):
        result = ingest(str(layout.root), present, overrides)
    print(
        f"{result.landed} clips landed: {len(result.added)} added to {result.dataset}, "
        f"{len(result.quarantined)} quarantined, {len(result.skipped)} skipped"
    )
    for clip, why in {**result.quarantined, **result.skipped}.items():
        print(f"  {clip}: {why}")
    if result.version:
        print(
            f"dataset version {result.version}"
            + (f", commit {result.commit}" if result.commit else "")
            + f"; report {result.report}"
        )


def _training_pipeline(layout: Layout, params_file: str, overrides: list[str], refresh: bool) -> PipelineResult:
    present = start_prefect(layout, params_file)
    from vidops.flows.pipeline import training_pipeline

    result = training_pipeline(root=str(layout.root), params_file=present, overrides=overrides, refresh=refresh)
    _print_result(layout, result)
    return result


def _print_result(layout: Layout, result: PipelineResult) -> None:
    for task, outcome in result.tasks.items():
        s, m, r, d = outcome.summary, outcome.evaluation.metrics, outcome.registration, outcome.decision
        print(f"\n{task}")
        print(
            f"  clips:            {s.accepted} accepted, {s.warned} of them with warnings, "
            f"{s.quarantined} quarantined ({s.quarantine})"
        )
        print(f"  evaluation:       {tasks.spec(task).headline(m)}")
        print(
            f"  registered model: {r.model_name} version {r.version}; "
            f"{'now champion' if d.champion else 'not champion'}: {d.reason}"
        )
        print(
            f"  MLflow run:       {r.run_id} "
            "(live during training: loss and accuracy, training and validation, each epoch)"
        )
        print(f"  metrics:          {outcome.evaluation.metrics_path}")
        print(f"  Data Docs:        {s.data_docs}")
    print(f"\nMLflow:           {result.tracking_uri}")
    if result.tracking_uri.startswith("sqlite:"):
        print(f"MLflow UI:        mlflow ui --backend-store-uri {result.tracking_uri}  (then http://127.0.0.1:5000)")
        print(
            f"Prefect UI:       PREFECT_HOME={layout.state / 'prefect'} prefect server start  "
            "(then http://127.0.0.1:4200)"
        )


def run_stage(args: argparse.Namespace) -> None:
    from vidops.components import stages
    from vidops.stack.profiles import registry_lock

    layout = Layout(args.root.resolve())
    params = load(layout.root, args.params, args.overrides)
    if args.name in ("extract", "train"):
        with progress_bar("clips" if args.name == "extract" else "epochs") as progress:
            result = stages.STAGES[args.name](layout, params, args.task, progress)
    elif args.name == "promote":
        result = stages.promote(layout, params, args.task, lock=registry_lock)
    else:
        result = stages.STAGES[args.name](layout, params, args.task)
    print(f"{args.name} {args.task}: {stages.summary(result, layout.root, params.registry.of(args.task).metric)}")


def generate_demo(args: argparse.Namespace) -> None:
    from vidops.components.generate import generate_dataset

    task = args.task or load(args.root.resolve(), args.params, []).tasks[0]
    flags = {"clips_per_class": args.clips_per_class, "seed": args.seed}
    params = load_params(None, [f"generate.{task}.{key}={value}" for key, value in flags.items() if value is not None])
    made = generate_dataset(args.dir, task, params.generate.of(task))
    print(f"wrote {made.clips} clips in {len(made.labels)} classes to {made.root}")


def write_dvc_yaml(args: argparse.Namespace) -> None:
    """dvc.yaml of the vidops checkout at `--root`, from components.dependencies and the tasks of components/tasks/."""
    root = args.root.resolve()
    own = root / "components" / "tasks"
    built_in = [t for t in tasks.specs() if t.code.parent == own]  # a task from an installed package has no folder here
    text = dependencies.dvc_yaml(root, built_in)
    target = root / "dvc.yaml"
    if args.check:
        if not target.is_file() or target.read_text() != text:
            print(f"{target}: not what `vidops dvc-yaml` writes; run it and commit the result", file=sys.stderr)
            raise SystemExit(1)
        print(f"{target}: as `vidops dvc-yaml` writes it")
        return
    target.write_text(text)
    print(f"wrote {target}: {len(dependencies.NAMES)} stages for {', '.join(t.name for t in built_in)}")

"""The `vidops` command. Heavy imports (Prefect, TensorFlow) wait until a command needs them."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any


from vidops.components import tasks
from vidops.components.errors import VidopsError
from vidops.components.layout import Layout
from vidops.components.params import Params, dump_params, load_params

if TYPE_CHECKING:  # importing it starts Prefect and TensorFlow
    from vidops.components.registry import Tracking
    from vidops.components.versioning import DatasetVersion
    from vidops.flows.pipeline import PipelineResult

PARAMS_FILE = "params.yaml"
STAGE_NAMES = ("validate", "extract", "train", "evaluate", "register", "promote")  # flows.stages.STAGES, without importing TensorFlow


def main(argv: Sequence[str] | None = None) -> int:
    from vidops.flows.profiles import VERBOSE, quiet_libraries

    args = _parser().parse_args(argv)
    if args.verbose:
        os.environ[VERBOSE] = "1"
    quiet_libraries()  # before any library is imported; the processes vidops starts inherit it
    # SIGTERM (kill, a stopped container, a CI time-out) unwinds like Ctrl-C: what the command started (its S3) is stopped
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        with _profile(args):
            args.handler(args)
    except VidopsError as exc:
        print(f"vidops: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vidops: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if refused := _credentials_refused(exc):
            print(f"vidops: error: {refused}", file=sys.stderr)
            return 1
        if not isinstance(exc, RuntimeError) or "ephemeral Prefect API" not in str(exc):
            raise
        from vidops.flows.profiles import EPHEMERAL_STARTUP

        print(f"vidops: error: Prefect's temporary API did not answer within {EPHEMERAL_STARTUP}={os.environ.get(EPHEMERAL_STARTUP)} s "
              "(the machine is busy?): try again, raise it, or start a server with `vidops stack up`", file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


STACK_ENV = "a client of a project's stack finds them in <project>/.vidops/stack/env"


def _credentials_refused(exc: BaseException) -> str | None:
    """One line naming the service that refused this process's credentials and the variables to set, when that is what
    failed (anywhere in the exception's chain); None otherwise."""
    from botocore.exceptions import ClientError
    from mlflow.exceptions import MlflowException
    from prefect.exceptions import PrefectHTTPStatusError

    from vidops.components.registry import refused_credentials

    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, PrefectHTTPStatusError) and seen.response.status_code in (401, 403):
            return (f"the Prefect API at {seen.request.url.copy_with(path='/api', query=None)} refused this client ({seen.response.status_code}): "
                    f"set PREFECT_API_AUTH_STRING to the server's auth string ({STACK_ENV})")  # fmt: skip
        if isinstance(seen, MlflowException) and refused_credentials(seen):
            return (f"the MLflow server at {os.environ.get('MLFLOW_TRACKING_URI')} refused this client's credentials: "
                    f"set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD ({STACK_ENV})")  # fmt: skip
        if isinstance(seen, ClientError) and seen.response.get("Error", {}).get("Code") in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return (f"the S3 at {os.environ.get('AWS_ENDPOINT_URL') or 'AWS'} refused this client's keys: "
                    f"set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY ({STACK_ENV})")  # fmt: skip
        seen = seen.__cause__ or seen.__context__
    return None

def _profile(args: argparse.Namespace) -> AbstractContextManager[object]:
    """Point this process at the project's services: the stack's variables while it is up (not for the demo, the
    embedded profile by definition), and for the commands that read or write models, the S3 that the registry's
    artifacts may live in (`flows.stack.registry_store`)."""
    project = args.workdir if args.handler is cmd_demo else getattr(args, "root", None)
    if project is None:
        return nullcontext()
    from vidops.flows.stack import load_env, registry_store

    layout = Layout(project.resolve())
    if args.handler is not cmd_demo:
        load_env(layout)
    return registry_store(layout) if args.handler in (cmd_demo, cmd_run, cmd_stage, cmd_predict, cmd_serve) else nullcontext()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidops", description="Workflow-orchestrated MLOps for video models.")
    parser.add_argument("--verbose", action="store_true",
                        help="let libraries talk: TensorFlow's C++ lines, progress bars, warnings (or set VIDOPS_VERBOSE=1)")  # fmt: skip
    parser.add_argument("--version", action="version", version=f"vidops {_version()}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="generate a dataset and run the whole pipeline on the embedded profile")
    demo.add_argument("--workdir", type=Path, default=Path("."), help="project folder to work in (default: here)")
    demo.add_argument("--refresh", action="store_true", help="run every stage again, ignoring cached results")
    _add_overrides(demo)
    demo.set_defaults(handler=cmd_demo)

    generate = commands.add_parser("generate", help="write a demo dataset of real H.264/AAC MP4 clips")
    generate.add_argument("dir", type=Path)
    demos = [task.name for task in tasks.specs() if task.demo]
    generate.add_argument("--task", choices=demos, default=demos[0])
    generate.add_argument("--clips-per-class", type=int, help="default: generate.<task>.clips_per_class")
    generate.add_argument("--seed", type=int, help="default: generate.<task>.seed")
    generate.set_defaults(handler=cmd_generate)

    validate = commands.add_parser("validate", help="catalog and validate a dataset; exit 0 when it is usable")
    validate.add_argument("dataset", type=Path, help="folder of <label>/<clip> files, or a manifest CSV (path, label[, group, split])")
    validate.add_argument("--task", choices=tasks.names(), help="check the clips as this task's (default: the first in params.yaml's tasks)")
    validate.add_argument("--report", type=Path, help="where the manifest, quarantine and Data Docs go (default: the project's data/catalog/<task> and reports/<task>/data_docs)")
    _add_project(validate)
    validate.set_defaults(handler=cmd_validate)

    sample = commands.add_parser("sample", help="save what the model sees of one video: frames, indices, times, aligned audio")
    sample.add_argument("video", type=Path)
    sample.add_argument("--task", choices=tasks.names(), help="extract as this task's model sees (default: the first in params.yaml's tasks)")
    sample.add_argument("--frames", type=int, help="default: extract.<task>.frames")
    sample.add_argument("--size", type=int, help="default: extract.<task>.size")
    sample.add_argument("--out", type=Path, required=True, help="an .npz file")
    _add_project(sample)
    _add_overrides(sample)
    sample.set_defaults(handler=cmd_sample)

    bench = commands.add_parser("bench", help="benchmarks that print ratios against an anchor timed in the same run")
    bench.add_argument("name", choices=["extract", "train", "pipeline", "stack", "scale"])
    bench.add_argument("--workdir", type=Path, default=Path(".vidops/bench"), help="where the generated clips are kept")
    bench.add_argument("--clips", type=int, help="extract: clips (24); train: clips per class (24); pipeline: clips per class (the demo's); scale: the largest dataset (4000)")
    bench.add_argument("--epochs", type=int, help="pipeline: training epochs of both models; train --encoder: of the classifier (default: the demo's)")
    bench.add_argument("--seconds", type=float, help="extract: seconds a clip (default: 10 long-GOP, 7 short-GOP)")
    bench.add_argument("--corpus", choices=["long-gop", "short-gop", "both"], default="both",
                       help="extract: x264-default clips with one keyframe each, UCF101-shaped XviD clips with one every 25 frames, or both")
    bench.add_argument("--workers", type=int, default=2, help="extract: worker processes")
    bench.add_argument("--ucf101-clips", type=int, help="scale: UCF101-shaped clips, and 1%% more for the re-run (default: 300)")
    bench.add_argument("--batches", type=int, default=60, help="train: timed batches")
    bench.add_argument("--encoder", help="train: instead, the classifier with this frame encoder against small: accuracy and training time")
    bench.add_argument("--runs", type=int, default=8, help="stack: flow runs submitted at once (default: 8)")
    bench.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432",
                       help="stack: the PostgreSQL server to load (databases of a new prefix, dropped afterwards)")
    bench.set_defaults(handler=cmd_bench)

    inspect = commands.add_parser("inspect", help="probe videos and print what PyAV finds, as JSON")
    inspect.add_argument("videos", type=Path, nargs="+")
    inspect.set_defaults(handler=cmd_inspect)

    stage = commands.add_parser("stage", help="run one pipeline stage without Prefect (what dvc.yaml calls)")
    stage.add_argument("name", choices=STAGE_NAMES)
    stage.add_argument("--task", choices=tasks.names(), required=True)
    _add_project(stage)
    _add_overrides(stage)
    stage.set_defaults(handler=cmd_stage)

    promote = commands.add_parser("promote", help="make a registered version champion, by a person's decision")
    promote.add_argument("model", help="registered model name, e.g. vidops-classifier")
    promote.add_argument("--version", help="default: the challenger")
    promote.add_argument("--reason", required=True, help="why; recorded on the version")
    promote.add_argument("--root", type=Path, default=Path("."), help="project folder, for the embedded MLflow store (default: here)")
    promote.set_defaults(handler=cmd_promote)

    rollback = commands.add_parser("rollback", help="move champion back to previous-champion")
    rollback.add_argument("model", help="registered model name, e.g. vidops-classifier")
    rollback.add_argument("--reason", default="rolled back by hand", help="why; recorded on both versions")
    rollback.add_argument("--root", type=Path, default=Path("."), help="project folder, for the embedded MLflow store (default: here)")
    rollback.set_defaults(handler=cmd_rollback)

    predict = commands.add_parser("predict", help="what a registered model says of videos, e.g. models:/vidops-classifier@champion")
    predict.add_argument("model_uri")
    predict.add_argument("videos", type=Path, nargs="+")
    predict.add_argument("--root", type=Path, default=Path("."), help="project folder, for the embedded MLflow store (default: here)")
    predict.set_defaults(handler=cmd_predict)

    data = commands.add_parser("data", help="the datasets in DVC: version and push them to the S3 remote, pull them, set the remote")
    data.add_argument("action", choices=["push", "pull", "remote"])
    data.add_argument("url", nargs="?", help="remote: the S3 URL, e.g. s3://my-bucket/datasets")
    data.add_argument("--endpoint-url", help="remote: an S3 server other than AWS's, e.g. http://minio.internal:9000")
    _add_project(data)
    data.set_defaults(handler=cmd_data)

    lineage = commands.add_parser("lineage", help="where a registered model came from: run, flow run, commit, params, dataset version")
    lineage.add_argument("model_uri", help="models:/NAME/VERSION or models:/NAME@ALIAS")
    lineage.add_argument("--checkout", action="store_true", help="also check out that dataset version with DVC (changes data/raw/<dataset>)")
    lineage.add_argument("--force", action="store_true", help="with --checkout: replace files of the dataset that are in no DVC version")
    lineage.add_argument("--root", type=Path, default=Path("."), help="project folder (default: here)")
    lineage.set_defaults(handler=cmd_lineage)

    stack = commands.add_parser("stack", help="the stack profile on this machine: S3 (SeaweedFS), MLflow and Prefect servers with their UIs, a worker")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument("--root", type=Path, default=Path("."), help="project folder; the stack's data goes to .vidops/stack/ (default: here)")
    for name, port in (("prefect", 4200), ("mlflow", 5000), ("s3", 8333)):
        stack.add_argument(f"--{name}-port", type=int, default=port, help=f"up: the {name} port on 127.0.0.1 (default: {port})")
    stack.add_argument("--database", metavar="URL", help="up: keep Prefect's and MLflow's state in PostgreSQL, postgresql://USER@HOST:PORT/PREFIX "
                       "(databases PREFIX_prefect, PREFIX_mlflow, PREFIX_mlflow_auth, made when missing; the password from PGPASSWORD); "
                       "default: SQLite under .vidops/")  # fmt: skip
    stack.add_argument("--workers", type=int, default=1, help="up: Prefect process workers polling the pool (default: 1)")
    stack.set_defaults(handler=cmd_stack)

    deploy = commands.add_parser("deploy", help="apply prefect.yaml's deployments (nightly training, ingest, on-demand promotion) to the Prefect server")
    deploy.add_argument("--root", type=Path, default=Path("."), help="project folder the flow runs work in (default: here)")
    deploy.add_argument("--spec", type=Path, help="another prefect.yaml, e.g. infra/kubernetes/prefect.yaml (the cluster's GPU pool)")
    deploy.set_defaults(handler=cmd_deploy)

    serve = commands.add_parser("serve", help="run prefect.yaml's deployments with their schedules in this process, without a worker")
    serve.add_argument("--root", type=Path, default=Path("."), help="project folder the flow runs work in (default: here)")
    serve.set_defaults(handler=cmd_serve)

    run = commands.add_parser("run", help="run a Prefect flow: the training pipeline (default), the promotion gate alone, or ingest")
    run.add_argument("flow", nargs="?", choices=["training_pipeline", "promotion", "ingest"], default="training_pipeline")
    run.add_argument("--task", choices=tasks.names(), help="promotion: gate this task's model only (default: every task in params.yaml)")
    run.add_argument("--version", help="promotion: the version to gate (default: the challenger); needs --task")
    run.add_argument("--refresh", action="store_true", help="training_pipeline: run every stage again, ignoring cached results")
    _add_project(run)
    _add_overrides(run)
    run.set_defaults(handler=cmd_run)
    return parser


def _version() -> str:
    """The installed distribution's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vidops")
    except PackageNotFoundError:
        return "(not installed)"


def _add_project(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=Path("."), help="project folder (default: here)")
    parser.add_argument("--params", default=PARAMS_FILE, help="params file, relative to the project folder")


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, e.g. --set train.classification.epochs=5 (repeatable)")  # fmt: skip


def cmd_generate(args: argparse.Namespace) -> None:
    from vidops.components.generate import generate_dataset

    flags = {"clips_per_class": args.clips_per_class, "seed": args.seed}
    params = load_params(None, [f"generate.{args.task}.{key}={value}" for key, value in flags.items() if value is not None])
    made = generate_dataset(args.dir, _demo_kind(args.task), params.generate.of(args.task))
    print(f"wrote {made.clips} clips in {len(made.labels)} classes to {made.root}")


def _demo_kind(task: str) -> str:
    """The demo generator's kind of data for `task`; an error for a task that has none."""
    kind = tasks.spec(task).demo
    if kind is None:
        raise VidopsError(f"task {task} has no demo data; put its dataset in data/raw/<name>/ and name it in datasets.{task}")
    return kind


def cmd_validate(args: argparse.Namespace) -> None:
    from vidops.components.validation import validate_dataset, validation_checks

    layout = Layout(args.root.resolve())
    params = _load(layout.root, args.params, [])
    task = args.task or params.tasks[0]
    report = args.report.resolve() if args.report else None  # relative to where the user is, as the shell completed it
    catalog, docs = (report, report / "data_docs") if report else (layout.catalog(task), layout.data_docs(task))
    summary = validate_dataset(args.dataset, catalog, validation_checks(params, task), docs, captioned=tasks.spec(task).captioned)
    print(f"{summary.clips} clips ({summary.probed} probed, {summary.reused} unchanged since the last run)")
    for row in summary.table():
        print(f"  {row['what']:<24} {row['clips']:>6}")
    print(f"quarantine: {summary.quarantine}")
    print(f"Data Docs:  {summary.data_docs}")


def cmd_sample(args: argparse.Namespace) -> None:
    import numpy as np

    from vidops.components.catalog import probe_clip
    from vidops.components.extraction import ClipFeatures, extract_clip
    from vidops.components.io import atomic_path

    root = args.root.resolve()
    task = args.task or _load(root, args.params, args.overrides).tasks[0]
    flags = [f"extract.{task}.{key}={value}" for key, value in (("frames", args.frames), ("size", args.size)) if value is not None]
    params = _load(root, args.params, [*flags, *args.overrides]).extract.of(task)
    probe = probe_clip(args.video)
    if not probe["readable"]:
        raise VidopsError(f"{args.video}: unreadable: {probe['error']}")
    try:
        clip = extract_clip(args.video, probe["frames"], params)
    except ValueError as exc:
        raise VidopsError(f"{args.video}: {exc}") from None
    with atomic_path(args.out.with_suffix(".npz")) as tmp, tmp.open("wb") as f:
        np.savez(f, **{k: getattr(clip, k) for k in ClipFeatures.__dataclass_fields__})
    print(f"frames {clip.frames.shape} at indices {clip.indices.tolist()}")
    print(f"times (s) {np.round(clip.times, 3).tolist()}")
    print(f"audio {clip.audio.shape} ({params.audio}; {'present' if clip.has_audio else 'no audio stream'}){', padded' if clip.padded else ''}")
    print(f"wrote {args.out.with_suffix('.npz')}")


def cmd_bench(args: argparse.Namespace) -> None:
    if args.name == "extract":
        from vidops.benchmarks import extract

        for corpus in extract.CORPORA if args.corpus == "both" else (args.corpus,):
            config = extract.BenchConfig(clips=args.clips or 24, seconds=args.seconds, corpus=corpus, workers=args.workers)
            print(extract.report(extract.run(args.workdir / "extract", config), config))
    elif args.name == "train":
        from vidops.benchmarks import train

        trained = train.BenchConfig(clips_per_class=args.clips or 24, batches=args.batches)
        if args.encoder:
            print(train.encoders_report(train.compare_encoders(args.workdir / "train", trained, args.encoder, args.epochs), trained))
        else:
            print(train.report(train.run(args.workdir / "train", trained), trained))
    elif args.name == "scale":
        from vidops.benchmarks import scale

        print(scale.report(scale.run(args.workdir / "scale", scale.sizes(args.clips), args.ucf101_clips or scale.UCF_CLIPS)))
    elif args.name == "stack":
        from vidops.benchmarks import stack

        print(stack.report(stack.run(args.workdir / "stack", args.runs, args.database)))
    else:
        from vidops.benchmarks import pipeline

        piped = pipeline.BenchConfig(clips_per_class=args.clips, epochs=args.epochs)
        print(pipeline.report(pipeline.run(args.workdir / "pipeline", piped), piped))


def cmd_inspect(args: argparse.Namespace) -> None:
    from vidops.components.catalog import probe_clip

    for video in args.videos:
        if not video.exists() and not video.is_symlink():
            raise VidopsError(f"{video}: no such file")
    probes = [{"path": str(video), **probe_clip(video)} for video in args.videos]
    print(json.dumps(probes if len(probes) > 1 else probes[0], indent=2, default=str))


def cmd_stage(args: argparse.Namespace) -> None:
    from vidops.flows.stages import STAGES, summary

    layout = Layout(args.root.resolve())
    params = _load(layout.root, args.params, args.overrides)
    if args.name in ("extract", "train"):
        with _progress_bar("clips" if args.name == "extract" else "epochs") as progress:
            result = STAGES[args.name](layout, params, args.task, progress)
    else:
        result = STAGES[args.name](layout, params, args.task)
    print(f"{args.name} {args.task}: {summary(result, layout.root, params.registry.of(args.task).metric)}")


def cmd_promote(args: argparse.Namespace) -> None:
    from vidops.components.promotion import promote

    with _locked_registry(args.root, args.model) as found:
        version = promote(found, args.model, args.version, args.reason)
    print(f"{args.model} version {version} is now champion")


def cmd_rollback(args: argparse.Namespace) -> None:
    from vidops.components.promotion import rollback

    with _locked_registry(args.root, args.model) as found:
        version = rollback(found, args.model, args.reason)
    print(f"{args.model} version {version} is champion again")


@contextmanager
def _locked_registry(root: Path, model: str) -> Iterator[Tracking]:
    """The project's MLflow, with `model`'s lock held (the gate takes the same one)."""
    from vidops.flows.profiles import registry_lock

    found = _registry(root)
    with registry_lock(Layout(root.resolve()), model):
        yield found


def cmd_predict(args: argparse.Namespace) -> None:
    from vidops.flows.profiles import quiet_libraries

    quiet_libraries()
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from tqdm import tqdm

    for video in args.videos:
        if not video.is_file():
            raise VidopsError(f"{video}: no such file")
    os.environ["VIDOPS_SERVE_PATHS"] = "1"  # components.serving.SERVE_PATHS: this process reads the user's own files
    with tempfile.TemporaryDirectory() as tmp:
        source = args.model_uri  # a folder or runs:/ URI is the user's to trust; a registered version must carry vidops's seal
        if args.model_uri.startswith(("models:/", "runs:/")):
            mlflow.set_tracking_uri(_registry(args.root).uri)
        if args.model_uri.startswith("models:/"):
            from vidops.components.registry import registered_version, trusted_download
            from vidops.flows.profiles import registry_key

            found = _registry(args.root)
            name, version = registered_version(found, args.model_uri)
            source = str(trusted_download(found, name, str(version.version), registry_key(Layout(args.root.resolve())), Path(tmp)))
        try:
            model = mlflow.pyfunc.load_model(source)
        except MlflowException as exc:
            raise VidopsError(f"{args.model_uri}: cannot load the model: {exc.message.splitlines()[0]}") from None
    for video in tqdm(args.videos, unit="video", file=sys.stderr, disable=len(args.videos) < 2):
        try:
            answer = model.predict(pd.DataFrame({"video": [str(video.resolve())]})).iloc[0]
        except MlflowException as exc:
            raise VidopsError(f"{video}: {exc.message}") from None
        main = {k: v for k, v in answer.items() if not k.startswith("p_")}
        print(f"{video}\t" + "\t".join(f"{k}={_shown(v)}" for k, v in main.items()))


def _shown(value: Any) -> str:
    """A served answer's value as `vidops predict` prints it: floats to 4 places, lists and dicts as JSON."""
    if isinstance(value, float):
        return f"{value:.4f}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _registry(root: Path) -> Tracking:
    """The project's MLflow; the embedded store only when a run has made it (no empty store made by asking)."""
    from vidops.flows.profiles import tracking

    found = tracking(Layout(root.resolve()))
    store = Path(found.uri.removeprefix("sqlite:///"))
    if found.uri.startswith("sqlite:///") and not store.is_file():
        raise VidopsError(f"{store}: no MLflow store; `vidops demo` or `vidops run` makes it")
    return found


def cmd_stack(args: argparse.Namespace) -> None:
    from vidops.flows import stack

    layout = Layout(args.root.resolve())
    if args.action == "up":
        _ensure_writable(layout.state)
        database = stack.Database.parse(args.database) if args.database else None
        for name, url in stack.up(layout, stack.Ports(args.prefect_port, args.mlflow_port, args.s3_port), database, args.workers).items():
            print(f"{name:8} {url}")
        env_file = stack.folder(layout) / stack.ENV_FILE
        print(f"vidops commands with --root {layout.root} now use the stack; for other tools: set -a; . {env_file}; set +a")
        print(f"the UIs ask for credentials, kept in {env_file} (mode 600): Prefect's login takes PREFECT_API_AUTH_STRING, "
              "MLflow's MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
        if database:
            print(f"Prefect and MLflow keep their state in PostgreSQL, {database.uri('*')}; with the stack down, vidops commands "
                  f"use the embedded store, {stack.embedded_tracking(layout).uri.removeprefix('sqlite:///')}")
            return
        print(f"MLflow serves the project's one registry, {stack.embedded_tracking(layout).uri.removeprefix('sqlite:///')}")
        if (former := stack.folder(layout) / "mlflow.db").is_file():
            print(f"a registry kept by an older vidops stays in {former}: mlflow ui --backend-store-uri sqlite:///{former}")
    elif args.action == "down":
        stopped = stack.down(layout)
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    else:
        services = stack.status(layout)
        if not services:
            print("the stack is down")
        for name, (url, alive) in services.items():
            print(f"{name:8} {'up' if alive else 'DOWN':5} {url}")
        if services and (database := stack.store(layout)):
            print(f"Prefect and MLflow keep their state in {database}")


def cmd_deploy(args: argparse.Namespace) -> None:
    from vidops.flows.deploy import deploy, deployments, spec_path

    layout = Layout(args.root.resolve())
    names = deploy(layout, args.spec)
    for name, spec in zip(names, deployments(spec_path(layout, args.spec)), strict=True):
        crons = ", ".join(f"{s['cron']} {s.get('timezone', 'UTC')}" for s in spec.get("schedules") or []) or "on demand"
        print(f"{name:32} {crons}")
    print(f"Prefect UI: {os.environ['PREFECT_API_URL'].removesuffix('/api')}/deployments")


def cmd_serve(args: argparse.Namespace) -> None:
    layout = Layout(args.root.resolve())
    from vidops.flows.profiles import activate

    activate(layout)
    from vidops.flows.deploy import serve

    serve(layout)


def cmd_run(args: argparse.Namespace) -> None:
    layout = Layout(args.root.resolve())
    params = _load(layout.root, args.params, args.overrides)  # fail fast, before Prefect starts
    if args.flow == "training_pipeline":
        _run_pipeline(layout, args.params, args.overrides, args.refresh)
        return
    if args.flow == "ingest":
        _run_ingest(layout, args.params, args.overrides)
        return
    if args.version and not args.task:
        raise VidopsError("--version names a version of one model: add --task")
    _registry(layout.root)
    present = _start_prefect(layout, args.params)
    from vidops.flows.pipeline import promotion

    tasks = [args.task] if args.task else params.tasks
    for task, decision in promotion(str(layout.root), present, args.overrides, {task: args.version for task in tasks}).items():
        print(f"{task}: {decision.model_name} version {decision.version}: {decision.decision}: {decision.reason}")


def _run_ingest(layout: Layout, params_file: str, overrides: list[str]) -> None:
    present = _start_prefect(layout, params_file)
    from vidops.components import versioning
    from vidops.flows.ingest import ingest
    from vidops.flows.stack import project_store

    versioning.init(layout.root)
    with project_store(layout):
        result = ingest(str(layout.root), present, overrides)
    print(f"{result.landed} clips landed: {len(result.added)} added to {result.dataset}, {len(result.quarantined)} quarantined, {len(result.skipped)} skipped")
    for clip, why in {**result.quarantined, **result.skipped}.items():
        print(f"  {clip}: {why}")
    if result.version:
        print(f"dataset version {result.version}" + (f", commit {result.commit}" if result.commit else "") + f"; report {result.report}")


def cmd_data(args: argparse.Namespace) -> None:
    from vidops.components import versioning
    from vidops.flows.stack import project_store

    layout = Layout(args.root.resolve())
    if args.action != "remote" and (args.url or args.endpoint_url):
        raise VidopsError(f"data {args.action} takes no URL; `vidops data remote URL` sets the remote")
    if args.action == "remote":
        if not args.url:
            raise VidopsError("data remote needs the S3 URL, e.g. vidops data remote s3://my-bucket/datasets")
        versioning.set_remote(layout.root, args.url, args.endpoint_url)
        print(f"DVC remote {versioning.REMOTE}: {args.url}" + (f" at {args.endpoint_url}" if args.endpoint_url else ""))
    elif args.action == "push":
        for version in version_datasets(layout, _load(layout.root, args.params, [])):
            print(f"{version.path.relative_to(layout.root)}: version {version.md5} ({version.files} files) pushed to {versioning.remote_url(layout.root)}")
    else:
        versioning.require_remote(layout.root)  # before any server starts
        with project_store(layout):
            versioning.pull(layout.root)
        print(f"pulled from {versioning.remote_url(layout.root)}")


def version_datasets(layout: Layout, params: Params) -> list[DatasetVersion]:
    """`dvc add` each task's dataset and push the versions to the remote (the project's own S3 unless set elsewhere)."""
    from vidops.components import versioning
    from vidops.flows.stack import project_store

    versioning.init(layout.root)
    with project_store(layout):
        versions = [versioning.add(layout.root, layout.raw(params.datasets.of(task))) for task in params.tasks]
        versioning.push(layout.root, [v.dvc_file for v in versions])
    return versions


def cmd_lineage(args: argparse.Namespace) -> None:
    from vidops.components import versioning
    from vidops.components.registry import lineage
    from vidops.flows.stack import project_store

    layout = Layout(args.root.resolve())
    found = lineage(_registry(layout.root), args.model_uri)
    t = found.tags
    print(f"model     {found.model_name} version {found.version}" + (f" ({', '.join(found.aliases)})" if found.aliases else ""))
    print(f"run       MLflow run {found.run_id}")
    print(f"flow run  {t.get('vidops.prefect_flow_run_id', '(not run through Prefect)')}")
    print(f"code      git commit {t.get('mlflow.source.git.commit', '(the project was not in git)')}")
    print(f"params    sha256 {t.get('vidops.params_sha256', '(not recorded)')}")
    print(f"data      {found.dataset}, DVC version {found.dataset_version or '(not recorded)'}")
    if not args.checkout:
        return
    if not (found.dataset and found.dataset_version):
        raise VidopsError(f"{args.model_uri}: its run recorded no dataset version to check out")
    with project_store(layout):
        versioning.checkout(layout.root, layout.root / found.dataset, found.dataset_version, force=args.force)
    print(f"checked out {found.dataset} at {found.dataset_version}")


def cmd_demo(args: argparse.Namespace) -> None:
    from vidops.components.generate import MARKER, generate_dataset
    from vidops.components.io import atomic_path

    layout = Layout(args.workdir.resolve())
    _ensure_writable(layout.root)
    params = _load(layout.root, PARAMS_FILE, args.overrides)
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
            generate_dataset(dataset, _demo_kind(task), params.generate.of(task))
    for version in version_datasets(layout, params):  # DVC, pushed to the project's own S3 (.vidops/s3/)
        print(f"versioned {version.path.relative_to(layout.root)} as {version.md5} ({version.files} files), pushed to the DVC remote")
    result = _run_pipeline(layout, PARAMS_FILE, args.overrides, args.refresh)
    if result.staged is not None:  # dvc.lock records the run: its outputs go to the remote too, so a clone can `dvc pull` them
        from vidops.components import versioning
        from vidops.flows.stack import project_store

        with project_store(layout):
            versioning.push(layout.root, [])
        print(f"\nDVC:              dvc.lock records this run (`dvc status` is clean); its outputs are pushed to {versioning.remote_url(layout.root)}")
        if result.staged:
            print(f"baseline:         git commit -m 'vidops demo: datasets, dvc.lock, metrics'  ({len(result.staged)} files staged)")


def _run_pipeline(layout: Layout, params_file: str, overrides: list[str], refresh: bool) -> PipelineResult:
    present = _start_prefect(layout, params_file)
    from vidops.flows.pipeline import training_pipeline

    result = training_pipeline(root=str(layout.root), params_file=present, overrides=overrides, refresh=refresh)
    _print_result(layout, result)
    return result


def _start_prefect(layout: Layout, params_file: str) -> str | None:
    """Point Prefect at the project's services (before it is imported); the params file a flow takes (None: the defaults, as _load)."""
    from vidops.flows.profiles import activate

    activate(layout)
    return params_file if (layout.root / params_file).exists() else None


def _print_result(layout: Layout, result: PipelineResult) -> None:
    for task, outcome in result.tasks.items():
        s, m, r, d = outcome.summary, outcome.evaluation.metrics, outcome.registration, outcome.decision
        print(f"\n{task}")
        print(f"  clips:            {s.accepted} accepted, {s.warned} of them with warnings, {s.quarantined} quarantined ({s.quarantine})")
        print(f"  evaluation:       {tasks.spec(task).headline(m)}")
        print(f"  registered model: {r.model_name} version {r.version}; {'now champion' if d.champion else 'not champion'}: {d.reason}")
        print(f"  MLflow run:       {r.run_id} (live during training: loss and accuracy, training and validation, each epoch)")
        print(f"  metrics:          {outcome.evaluation.metrics_path}")
        print(f"  Data Docs:        {s.data_docs}")
    print(f"\nMLflow:           {result.tracking_uri}")
    if result.tracking_uri.startswith("sqlite:"):
        print(f"MLflow UI:        mlflow ui --backend-store-uri {result.tracking_uri}  (then http://127.0.0.1:5000)")
        print(f"Prefect UI:       PREFECT_HOME={layout.state / 'prefect'} prefect server start  (then http://127.0.0.1:4200)")


@contextmanager
def _progress_bar(unit: str) -> Iterator[Callable[[int, int], None]]:
    """A progress callback (done, total) drawn as a bar on stderr."""
    from tqdm import tqdm

    bar = tqdm(unit=unit, file=sys.stderr, disable=None)  # None: no bar when stderr is not a terminal (a log, CI)
    try:
        yield lambda done, total: (setattr(bar, "total", total), bar.update(done - bar.n))
    finally:
        bar.close()


def _load(root: Path, params_file: str, overrides: list[str]) -> Params:
    """The project's params; the defaults when the project has no params.yaml and no other file was named."""
    path = root / params_file
    if params_file == PARAMS_FILE and not path.exists():
        return load_params(None, overrides)
    return load_params(path, overrides)


def _ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".vidops-write-check-{id(folder)}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise VidopsError(f"{folder}: the workdir is not writable: {exc.strerror}") from None


if __name__ == "__main__":
    sys.exit(main())

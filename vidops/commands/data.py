"""`vidops validate`, `sample`, `inspect`, `data` and `lineage`: the clips, what a model sees of one, and their
versions."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vidops.commands.shared import load, registry
from vidops.components import tasks
from vidops.components.errors import VidopsError
from vidops.components.layout import Layout


def add(
    commands: Any, project: argparse.ArgumentParser, params: argparse.ArgumentParser, overrides: argparse.ArgumentParser
) -> None:
    validate = commands.add_parser(
        "validate", parents=[project, params], help="catalog and validate a dataset; exit 0 when it is usable"
    )
    validate.add_argument(
        "dataset", type=Path, help="folder of <label>/<clip> files, or a manifest CSV (path, label[, group, split])"
    )
    validate.add_argument(
        "--task",
        choices=tasks.names(),
        help="check the clips as this task's (default: the first in params.yaml's tasks)",
    )
    validate.add_argument(
        "--report",
        type=Path,
        help="where the catalog, quarantine and Data Docs go "
        "(default: the project's data/catalog/<task> and reports/<task>/data_docs)",
    )
    validate.set_defaults(handler=validate_dataset)

    sample = commands.add_parser(
        "sample",
        parents=[project, params, overrides],
        help="save what the model sees of one video: frames, indices, times, aligned audio",
    )
    sample.add_argument("video", type=Path)
    sample.add_argument(
        "--task",
        choices=tasks.names(),
        help="extract as this task's model sees (default: the first in params.yaml's tasks)",
    )
    sample.add_argument("--frames", type=int, help="default: extract.<task>.frames")
    sample.add_argument("--size", type=int, help="default: extract.<task>.size")
    sample.add_argument("--out", type=Path, required=True, help="an .npz file")
    sample.set_defaults(handler=sample_video)

    inspect = commands.add_parser("inspect", help="probe videos and print what PyAV finds, as JSON")
    inspect.add_argument("videos", type=Path, nargs="+")
    inspect.set_defaults(handler=inspect_videos)

    data = commands.add_parser(
        "data",
        parents=[project, params],
        help="the datasets in DVC: version and push them to the S3 remote, pull them, set the remote",
    )
    data.add_argument("action", choices=["push", "pull", "remote"])
    data.add_argument("url", nargs="?", help="remote: the S3 URL, e.g. s3://my-bucket/datasets")
    data.add_argument("--endpoint-url", help="remote: an S3 server other than AWS's, e.g. http://minio.internal:9000")
    data.set_defaults(handler=dataset_versions)

    lineage = commands.add_parser(
        "lineage",
        parents=[project],
        help="where a registered model came from: run, flow run, commit, params, dataset version",
    )
    lineage.add_argument("model_uri", help="models:/NAME/VERSION or models:/NAME@ALIAS")
    lineage.add_argument(
        "--checkout",
        action="store_true",
        help="also check out that dataset version with DVC (changes data/raw/<dataset>)",
    )
    lineage.add_argument(
        "--force", action="store_true", help="with --checkout: replace files of the dataset that are in no DVC version"
    )
    lineage.set_defaults(handler=model_lineage)


def validate_dataset(args: argparse.Namespace) -> None:
    from vidops.components.validation import validate_dataset, validation_checks

    layout = Layout(args.root.resolve())
    params = load(layout.root, args.params, [])
    task = args.task or params.tasks[0]
    report = args.report.resolve() if args.report else None  # relative to where the user is, as the shell completed it
    catalog, docs = (report, report / "data_docs") if report else (layout.catalog(task), layout.data_docs(task))
    summary = validate_dataset(
        args.dataset, catalog, validation_checks(params, task), docs, captioned=tasks.spec(task).captioned
    )
    print(f"{summary.clips} clips ({summary.probed} probed, {summary.reused} unchanged since the last run)")
    for row in summary.table():
        print(f"  {row['what']:<24} {row['clips']:>6}")
    print(f"quarantine: {summary.quarantine}")
    print(f"Data Docs:  {summary.data_docs}")


def sample_video(args: argparse.Namespace) -> None:
    import numpy as np

    from vidops.components.extraction import ClipFeatures, extract_clip
    from vidops.components.io import atomic_path
    from vidops.components.probe import probe_clip

    root = args.root.resolve()
    task = args.task or load(root, args.params, args.overrides).tasks[0]
    flags = [
        f"extract.{task}.{key}={value}"
        for key, value in (("frames", args.frames), ("size", args.size))
        if value is not None
    ]
    params = load(root, args.params, [*flags, *args.overrides]).extract.of(task)
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
    padded = ", padded" if clip.padded else ""
    print(f"audio {clip.audio.shape} ({params.audio}; {'present' if clip.has_audio else 'no audio stream'}){padded}")
    print(f"wrote {args.out.with_suffix('.npz')}")


def inspect_videos(args: argparse.Namespace) -> None:
    from vidops.components.probe import probe_clip

    for video in args.videos:
        if not video.exists() and not video.is_symlink():
            raise VidopsError(f"{video}: no such file")
    probes = [{"path": str(video), **probe_clip(video)} for video in args.videos]
    print(json.dumps(probes if len(probes) > 1 else probes[0], indent=2, default=str))


def dataset_versions(args: argparse.Namespace) -> None:
    from vidops.commands.pipeline import version_datasets
    from vidops.components import versioning
    from vidops.stack.seaweedfs import project_store

    layout = Layout(args.root.resolve())
    if args.action != "remote" and (args.url or args.endpoint_url):
        raise VidopsError(f"data {args.action} takes no URL; `vidops data remote URL` sets the remote")
    if args.action == "remote":
        if not args.url:
            raise VidopsError("data remote needs the S3 URL, e.g. vidops data remote s3://my-bucket/datasets")
        versioning.set_remote(layout.root, args.url, args.endpoint_url)
        print(f"DVC remote {versioning.REMOTE}: {args.url}" + (f" at {args.endpoint_url}" if args.endpoint_url else ""))
    elif args.action == "push":
        for version in version_datasets(layout, load(layout.root, args.params, [])):
            where = versioning.remote_url(layout.root)
            print(
                f"{version.path.relative_to(layout.root)}: version {version.md5} ({version.files} files) "
                f"pushed to {where}"
            )
    else:
        versioning.require_remote(layout.root)  # before any server starts
        with project_store(layout):
            versioning.pull(layout.root)
        print(f"pulled from {versioning.remote_url(layout.root)}")


def model_lineage(args: argparse.Namespace) -> None:
    from vidops.components import versioning
    from vidops.components.lineage import lineage
    from vidops.stack.seaweedfs import project_store

    layout = Layout(args.root.resolve())
    found = lineage(registry(layout.root), args.model_uri)
    t = found.tags
    print(
        f"model     {found.model_name} version {found.version}"
        + (f" ({', '.join(found.aliases)})" if found.aliases else "")
    )
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

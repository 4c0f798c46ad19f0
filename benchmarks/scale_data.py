"""`vidops bench scale`'s DVC part: `dvc add`, `dvc push` and `dvc pull` of the generated datasets, through
`components.versioning` and the project's S3 (SeaweedFS)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vidops.benchmarks.scale_projects import ADDED, CLASSES, OVERRIDES, TASK, Rerun, _place, _pool, _project, _seconds
from vidops.components.params import load_params

PUSH_JOBS = (2, 32)  # DVC's --jobs tried on the largest push, besides its default (4 per core)


@dataclass(frozen=True)
class Versions:
    """The DVC part's figures."""

    timed: dict[str, dict[int, float]]  # dvc add, dvc push, dvc pull -> N -> seconds
    rerun: dict[str, Rerun]  # dvc add, dvc push -> the re-run after adding ADDED
    push_jobs: dict[int, float]  # DVC's --jobs -> seconds of the largest dataset's push


def versions(workdir: Path, sizes: tuple[int, ...], jobs: tuple[int, ...] = PUSH_JOBS) -> Versions:
    """`dvc add`, `dvc push` and, into a fresh clone, `dvc pull` of each size's dataset in a fresh project, through
    `components.versioning` and the project's S3 as `vidops data push` starts it (SeaweedFS, stopped afterwards); at
    the largest, its push again with each of `jobs` (DVC's --jobs) to an empty prefix, then add and push after ADDED
    new clips joined."""
    from vidops.components import versioning
    from vidops.stack.seaweedfs import project_store

    params = load_params(None, OVERRIDES)
    largest = max(sizes)
    added = max(1, round(ADDED * largest))
    pool = _pool(workdir / "pool", largest + added)
    classes = min(CLASSES, max(2, min(sizes) // 5))
    timed: dict[str, dict[int, float]] = {"dvc add": {}, "dvc push": {}, "dvc pull": {}}
    rerun: dict[str, Rerun] = {}
    by_jobs: dict[int, float] = {}
    for n in sizes:
        layout = _project(workdir / f"dvc{n}", params, pool[:n], classes, copies=True)
        folder = layout.raw(params.datasets.of(TASK))
        _dvc_project(layout.root)
        with project_store(layout):  # the user's path: `vidops data push` (cli.version_datasets)
            timed["dvc add"][n], version = _seconds(versioning.add, layout.root, folder)
            timed["dvc push"][n], _ = _seconds(versioning.push, layout.root, [version.dvc_file])
            timed["dvc pull"][n] = _pull_clone(layout.root, version.dvc_file, workdir / f"dvc{n}-clone")
            if n < largest:
                continue
            by_jobs = {j: _push_elsewhere(layout.root, version.dvc_file, j) for j in jobs}
            _place(pool[n : n + added], folder, classes, copies=True)
            rerun |= _version_again(layout.root, folder)
    return Versions(timed, rerun, by_jobs)


def _dvc_project(root: Path) -> None:
    """`root` a DVC project of its own, not a folder of the git repository the bench may run in (whose .gitignore hides
    .vidops/, where DVC refuses to add), with its own record of file hashes: DVC keys that record by the project's path,
    so a project made again at the same path (inodes reused) would otherwise skip hashing clips it saw before."""
    from vidops.components import versioning

    versioning.dvc(root, "init", "--no-scm", "--quiet")
    _own_hash_record(root)


def _own_hash_record(root: Path) -> None:
    from vidops.components import versioning

    versioning.dvc(root, "config", "--local", "core.site_cache_dir", str(root / ".dvc" / "tmp" / "site"))


def _pull_clone(root: Path, dvc_file: Path, clone: Path) -> float:
    """Seconds of `dvc pull` of the version `dvc_file` pins into `clone`, a fresh project with the same remote and an
    empty cache: what a new machine does."""
    from vidops.components import versioning

    shutil.rmtree(clone, ignore_errors=True)
    clone.mkdir(parents=True)
    versioning.dvc(clone, "init", "--no-scm", "--quiet")
    for name in ("config", "config.local"):  # the remote, its endpoint and keys
        shutil.copy2(root / ".dvc" / name, clone / ".dvc" / name)
    _own_hash_record(clone)
    pinned = clone / dvc_file.relative_to(root)
    pinned.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(dvc_file, pinned)
    seconds, _ = _seconds(versioning.pull, clone, [pinned])
    folder, expected = pinned.with_suffix(""), versioning.read_version(pinned.with_suffix("")).files
    if (files := sum(1 for p in folder.rglob("*") if p.is_file())) != expected:
        raise AssertionError(f"{folder}: dvc pull brought {files} files of the {expected} that {pinned} pins")
    shutil.rmtree(clone)
    return seconds


def _push_elsewhere(root: Path, dvc_file: Path, jobs: int) -> float:
    """Seconds of a push of the version with `jobs` parallel uploads to an empty prefix of the same S3 (then the
    project's remote again)."""
    from vidops.components import versioning
    from vidops.stack.seaweedfs import BUCKET

    keys = (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"])  # project_store set them
    versioning.set_remote(root, f"s3://{BUCKET}/jobs{jobs}", os.environ["AWS_ENDPOINT_URL"], keys)
    try:
        seconds, _ = _seconds(versioning.push, root, [dvc_file], jobs=jobs)
    finally:
        versioning.set_remote(root, versioning.local_url(BUCKET), os.environ["AWS_ENDPOINT_URL"], keys)
    return seconds


def _version_again(root: Path, folder: Path) -> dict[str, Rerun]:
    """`dvc add` and `dvc push` after new clips joined the folder: the clips each stored or uploaded, and reused."""
    from vidops.components import versioning

    cache = root / ".dvc" / "cache" / "files" / "md5"
    before = sum(1 for p in cache.glob("*/*") if p.suffix != ".dir")
    add_s, version = _seconds(versioning.add, root, folder)
    stored = sum(1 for p in cache.glob("*/*") if p.suffix != ".dir") - before
    push_s, pushed = _seconds(versioning.push, root, [version.dvc_file])
    uploaded = pushed - 1  # the new listing (`<md5>.dir`) is one of them
    return {
        "dvc add": Rerun(add_s, stored, version.files - stored),
        "dvc push": Rerun(push_s, uploaded, version.files - uploaded),
    }

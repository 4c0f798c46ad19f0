"""Dataset versions with DVC: a dataset folder is `dvc add`ed and pushed to an S3 remote; its version is the
hash DVC gives the folder (`<md5>.dir`), which MLflow runs record and `vidops lineage` checks out again.

DVC runs as its command line (`dvc.cli.main`, what the `dvc` script runs, in a process of its own: `dvc_launcher`); the
credentials of a remote go to `.dvc/config.local` (which git ignores) or come from the
environment, never into the committed `.dvc/config`.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from vidops.components import dvc_launcher
from vidops.components.errors import VidopsError
from vidops.components.io import atomic_path, write_text
from vidops.components.params import S3_URL

REMOTE = "vidops"  # the remote vidops configures, made the default
SECRETS = {"access_key_id", "secret_access_key", "--"}  # remote options whose values are never printed
LOCAL_OPTIONS = ("endpointurl", "access_key_id", "secret_access_key")  # set_remote's in .dvc/config.local


@dataclass(frozen=True)
class DatasetVersion:
    """One version of a dataset folder: DVC's hash of it, its files and bytes, and the .dvc file that pins it."""

    path: Path
    md5: str  # "<md5>.dir"
    files: int
    size: int
    dvc_file: Path


class ServerGone(VidopsError):
    """A DVC command stopped because the S3 server it talks to is gone (`watching`); `reason` says how it was seen."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


_watches: list[Callable[[], str | None]] = []


@contextmanager
def watching(gone: Callable[[], str | None]) -> Iterator[None]:
    """While the block runs, a DVC command that talks to the remote is stopped as soon as `gone` returns a reason (the
    S3 server, one this process started, has died): DVC would otherwise try every file against it, each with retries,
    for minutes before it says so."""
    _watches.append(gone)
    try:
        yield
    finally:
        _watches.remove(gone)


def _server_gone() -> str | None:
    """Why a `watching` check says the S3 server is gone; None while it is up."""
    return next((why for gone in list(_watches) if (why := gone())), None)


def dvc(root: Path, *args: str, check: bool = True, watched: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `dvc ARGS` in `root`; an error quotes DVC's own message. A `watched` command (one that talks to the remote)
    is stopped, with ServerGone, when a `watching` check says the server is gone."""
    shown = " ".join("***" if i and args[i - 1] in SECRETS else arg for i, arg in enumerate(args))
    # DVC writes a version's listing last: a command killed part-way leaves nothing half-done that passes for whole
    try:
        done = dvc_launcher.run(
            root, args, {**os.environ, "DVC_NO_ANALYTICS": "1"}, stop=_server_gone if watched and _watches else None
        )
    except dvc_launcher.Stopped as exc:
        raise ServerGone(f"dvc {shown} in {root} was stopped: {exc}", str(exc)) from None
    if check and done.returncode != 0:
        raise VidopsError(f"dvc {shown} in {root} failed: {_message(done)}")
    return done


def is_repo(root: Path) -> bool:
    return (root / ".dvc").is_dir()


def init(root: Path) -> None:
    """Make `root` a DVC project, once: with git when `root` is a git repository's top, inside it (--subdir)
    when it is a folder of one, without (--no-scm) otherwise."""
    if is_repo(root):
        return
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
    if top.returncode != 0:
        dvc(root, "init", "--no-scm", "--quiet")
    elif Path(top.stdout.strip()).resolve() == root.resolve():
        dvc(root, "init", "--quiet")
    else:
        dvc(root, "init", "--subdir", "--quiet")


def local_url(bucket: str) -> str:
    """The remote's URL in the project's own S3 (SeaweedFS: embedded and stack profiles)."""
    return f"s3://{bucket}/dvc"


def remote_url(root: Path) -> str | None:
    """The default remote's URL, None when the project has none. Read in this process by DVC's own reader (every level
    of its config): a `dvc` command is slow to start, and each push and pull asks before it starts (measured:
    benchmarks/README.md)."""
    from dvc.config import Config

    if not is_repo(root):
        return None
    config = Config(dvc_dir=str(root / ".dvc"), validate=False)
    name = config.get("core", {}).get("remote")
    return config.get("remote", {}).get(name, {}).get("url") if name else None


def set_remote(root: Path, url: str, endpoint_url: str | None = None, keys: tuple[str, str] | None = None) -> None:
    """Make `url` (s3://bucket/prefix) the default remote `vidops` of the project (made a DVC project when it is not).
    The URL goes to `.dvc/config`; an endpoint of a server on this machine and any keys go to `.dvc/config.local`,
    which is never committed. Written as `dvc remote add --default --force` and `dvc remote modify [--local]` write
    it, by DVC's own config writer in this process: the project's S3 sets it at every start, and each `dvc` command is
    slow to start (measured: benchmarks/README.md)."""
    from dvc.config import Config

    if not re.fullmatch(S3_URL, url):
        raise VidopsError(f"{url}: not an S3 URL such as s3://my-bucket/datasets")
    init(root)
    local = {"endpointurl": endpoint_url} if endpoint_url and _on_this_machine(endpoint_url) else {}
    shared = {"url": url, **({"endpointurl": endpoint_url} if endpoint_url and not local else {})}
    local |= {"access_key_id": keys[0], "secret_access_key": keys[1]} if keys else {}
    private = root / ".dvc" / "config.local"
    if local and not private.exists():  # DVC writes it with the umask's mode (644): made 600 first, it keeps that
        write_text(private, "", secret=True)
    config = Config(dvc_dir=str(root / ".dvc"), validate=False)
    with config.edit("repo") as conf:
        conf["core"]["remote"] = REMOTE
        conf["remote"][REMOTE] = shared  # as --force: none of another remote's options left over
    if private.is_file():
        with config.edit("local") as conf:
            options = {k: v for k, v in conf["remote"].get(REMOTE, {}).items() if k not in LOCAL_OPTIONS} | local
            conf["remote"].pop(REMOTE, None)
            if options:
                conf["remote"][REMOTE] = options
        private.chmod(0o600)  # one an older vidops (or DVC itself) made


def _on_this_machine(url: str) -> bool:
    return re.match(r"https?://(127\.|localhost|\[::1\])", url) is not None


def add(root: Path, folder: Path) -> DatasetVersion:
    """`dvc add` the folder (unchanged files are not hashed again); the version it now is."""
    dvc(root, "add", "--quiet", str(folder.relative_to(root)))
    return read_version(folder)


def read_version(folder: Path) -> DatasetVersion:
    """The version a folder's .dvc file pins."""
    dvc_file = folder.with_name(folder.name + ".dvc")
    try:
        out = yaml.safe_load(dvc_file.read_text())["outs"][0]
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError) as exc:
        raise VidopsError(f"{dvc_file}: not a .dvc file of a dataset folder ({exc})") from None
    return DatasetVersion(folder, out["md5"], int(out.get("nfiles", 0)), int(out.get("size", 0)), dvc_file)


def push(root: Path, targets: list[Path], tries: int = 3, wait_s: float = 2.0, jobs: int | None = None) -> int:
    """`dvc push` the targets' data to the default remote, with `jobs` parallel uploads (default: DVC's, 4 per core),
    trying again (exponential backoff, jitter) on any failure but refused credentials; the number of files DVC
    uploaded (a folder's listing counts as one; 0 when the remote had them all).

    DVC uploads a folder's files first and its listing (`<md5>.dir`) last, so a push that fails
    part-way leaves no version on the remote that names missing files; the next push sends what is left.
    """
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

    url = require_remote(root)
    names = [str(t.relative_to(root)) for t in targets]
    half = (
        "the remote holds no listing of a version whose files did not all arrive (DVC writes it last), "
        "so a later push completes it"
    )

    def once() -> int:
        try:
            done = dvc(root, "push", *_jobs(jobs), *names, check=False, watched=True)
        except ServerGone as exc:  # trying again cannot help
            raise VidopsError(f"dvc push to {url} stopped: {exc.reason}; {half}") from None
        if done.returncode == 0:
            return _transferred(done.stdout, "pushed")
        message = _message(done)
        if _denied(message):
            raise VidopsError(
                f"dvc push to {url}: the S3 server refused the credentials ({message}); "
                "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or .dvc/config.local"
            )
        raise _PushFailed(message)

    again = Retrying(
        stop=stop_after_attempt(tries),
        wait=wait_exponential_jitter(initial=wait_s, jitter=wait_s),
        retry=retry_if_exception_type(_PushFailed),
        reraise=True,
    )
    try:
        return again(once)
    except _PushFailed as exc:
        raise VidopsError(f"dvc push to {url} failed {tries} times ({exc}); {half}") from None


class _PushFailed(VidopsError):
    """A push that failed in a way another try may mend (not refused credentials, not a server gone)."""


def _transferred(summary: str, verb: str) -> int:
    """The files DVC's summary line says it `verb` ("41 files pushed", "1 file fetched"); 0 when it says none."""
    found = re.search(rf"(\d+) files? {verb}", summary)
    return int(found.group(1)) if found else 0


def _jobs(jobs: int | None) -> list[str]:
    if jobs is not None and jobs < 1:
        raise VidopsError(f"{jobs}: DVC's --jobs must be 1 or more")
    return [] if jobs is None else ["--jobs", str(jobs)]


def pull(root: Path, targets: list[Path] | None = None, jobs: int | None = None) -> None:
    """`dvc pull` the targets (default: everything the project pins) from the default remote, with `jobs` parallel
    downloads (default: DVC's, 4 per core)."""
    url = require_remote(root)
    try:
        done = dvc(
            root, "pull", *_jobs(jobs), *(str(t.relative_to(root)) for t in targets or []), check=False, watched=True
        )
    except ServerGone as exc:
        raise VidopsError(f"dvc pull from {url} stopped: {exc.reason}") from None
    if done.returncode != 0:
        message = _message(done)
        hint = "; check the keys" if _denied(message) else ""
        raise VidopsError(f"dvc pull from {url} failed: {message}{hint}")


def require_remote(root: Path) -> str:
    """The default remote's URL; an error naming what to do when `root` is not a DVC project or has no remote."""
    if not is_repo(root):
        raise VidopsError(f"{root}: not a DVC project; `vidops data push` makes it one")
    url = remote_url(root)
    if url is None:
        raise VidopsError(f"{root}: no DVC remote is configured; `vidops data remote s3://BUCKET/PREFIX` sets one")
    return url


def _denied(message: str) -> bool:
    return re.search(r"InvalidAccessKeyId|SignatureDoesNotMatch|AccessDenied|Forbidden|\b403\b", message) is not None


def _message(done: subprocess.CompletedProcess[str]) -> str:
    """DVC's error lines, without its advertising."""
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")] or lines[-3:]
    return " ".join(errors)[-1500:] or f"exit code {done.returncode}"


def current_version(root: Path, folder: Path) -> str:
    """DVC's hash of the folder as it is now (`<md5>.dir`), the value `dvc add` would pin, without adding it. In a DVC
    project it respects .dvcignore and reuses DVC's record of the hashes of unchanged files; elsewhere it hashes every
    file."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs import LocalFileSystem, MemoryFileSystem

    if not folder.is_dir():
        raise VidopsError(f"{folder}: no such dataset folder")
    if is_repo(root):
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            _, _, obj = build(
                repo.cache.local, repo.fs.abspath(str(folder)), repo.fs, "md5", ignore=repo.dvcignore, dry_run=True
            )
    else:
        _, _, obj = build(HashFileDB(MemoryFileSystem(), "/odb"), str(folder), LocalFileSystem(), "md5", dry_run=True)
    return obj.hash_info.value


def unversioned(root: Path, folder: Path) -> list[str]:
    """The files of `folder` (relative to it) whose content DVC's local cache does not hold: work that a checkout of
    another version would destroy for good (new clips, edits never `dvc add`ed)."""
    from dvc.repo import Repo
    from dvc_data.hashfile.build import build

    if not folder.is_dir():
        return []
    with Repo(str(root)) as repo:
        _, _, tree = build(
            repo.cache.local, repo.fs.abspath(str(folder)), repo.fs, "md5", ignore=repo.dvcignore, dry_run=True
        )
        return sorted("/".join(key) for key, _, hash_info in tree if not repo.cache.local.exists(hash_info.value))


def checkout(root: Path, folder: Path, md5: str, force: bool = False) -> DatasetVersion:
    """Make `folder` the dataset version `md5` again: pin it in the folder's .dvc file, fetch it when the local cache
    lacks it, and check it out. When it cannot be had, the .dvc file keeps its old pin and the error says so.

    Refused, before anything changes, when the folder holds files DVC's cache does not have, unless `force`."""
    if not re.fullmatch(r"[0-9a-f]{32}\.dir", md5):
        raise VidopsError(f"{md5!r}: not a DVC dataset version such as 0123456789abcdef0123456789abcdef.dir")
    lost = [] if force else unversioned(root, folder)
    if lost:
        shown = ", ".join(lost[:10]) + (f" and {len(lost) - 10} more" if len(lost) > 10 else "")
        raise VidopsError(
            f"{folder}: {len(lost)} file(s) there are in no DVC version, and checking out {md5} would delete or "
            f"overwrite them: {shown}; `dvc add {folder.relative_to(root)}` keeps them as a version first, "
            "or --force replaces them"
        )
    dvc_file = folder.with_name(folder.name + ".dvc")
    before = dvc_file.read_text() if dvc_file.is_file() else None
    with atomic_path(dvc_file) as tmp:
        tmp.write_text(yaml.safe_dump({"outs": [{"md5": md5, "path": folder.name, "hash": "md5"}]}, sort_keys=False))
    target = str(dvc_file.relative_to(root))
    try:
        if dvc(root, "checkout", "--force", target, check=False).returncode != 0:  # not in the local cache: fetch it
            pull(root, [dvc_file])
    except VidopsError as exc:
        if before is None:
            dvc_file.unlink()
        else:
            with atomic_path(dvc_file) as tmp:
                tmp.write_text(before)
        raise VidopsError(
            f"{folder}: version {md5} could not be checked out, {dvc_file} keeps its old pin "
            f"(`dvc checkout {target}` restores that one): {exc}"
        ) from None
    return read_version(folder)


def commit(root: Path, version: DatasetVersion, message: str) -> str | None:
    """Commit the version's .dvc file (and the .gitignore DVC keeps beside it) when `root` is in a git repository;
    the commit's hash, None outside git."""
    git = lambda *args: subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if git("rev-parse", "--is-inside-work-tree").returncode != 0:
        return None
    paths = [
        str(p.relative_to(root)) for p in (version.dvc_file, version.dvc_file.with_name(".gitignore")) if p.exists()
    ]
    added = git("add", "--", *paths)
    done = git("commit", "--quiet", "-m", message, "--", *paths) if added.returncode == 0 else added
    if done.returncode != 0:
        raise VidopsError(f"git commit of {', '.join(paths)} in {root} failed: {(done.stderr or done.stdout).strip()}")
    return git("rev-parse", "HEAD").stdout.strip()


def git_commit(root: Path) -> str | None:
    """The commit checked out in `root`'s git repository; None outside git."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def record_pipeline(root: Path, stages: list[str]) -> list[str]:
    """Record in dvc.lock what a run outside DVC (the Prefect flow) left for `stages` (`dvc commit`), so that `dvc
    status` and `dvc repro` know it is up to date, and stage the lock, the .dvc files and the metrics in git; the paths
    staged."""
    dvc(root, "commit", "--force", "--quiet", *stages)
    return stage_in_git(root)


def stage_in_git(root: Path) -> list[str]:
    """`git add` what a baseline commit needs (dvc.lock, the datasets' .dvc files, the metrics, plots and reports
    that DVC keeps out of its cache) when `root` is the top of a git repository; the paths staged."""
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root.resolve():
        return []
    # .gitignore keeps data's clips and shards out; DVC's own .gitignore keeps .dvc/config.local's keys out
    paths = [name for name in ("dvc.lock", "data", "reports", ".dvc/config", ".dvcignore") if (root / name).exists()]
    subprocess.run(["git", "add", "--all", "--", *paths], cwd=root, capture_output=True, check=True)
    staged = subprocess.run(
        ["git", "diff", "--cached", "--name-only", "--", *paths], cwd=root, capture_output=True, text=True, check=True
    )
    return staged.stdout.split()

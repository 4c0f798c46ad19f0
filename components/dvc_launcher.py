"""DVC's commands, each a process forked from a helper that has imported DVC once.

A `dvc` command line spends a long while importing DVC (its commands, s3fs, botocore) before it does anything, and
vidops runs several a flow run (add, push, commit, checkout), each paying it again (measured: benchmarks/README.md).
Here a helper process (one a vidops process, started at its first DVC command) imports DVC, then forks a child for each
command, which runs DVC's own entry point (`dvc.cli.main`, what the `dvc` script runs) in the caller's folder with the
caller's environment. A command stays a process of its own: it can be killed as a `dvc` process can, and nothing of one
command is left for the next. The helper runs one command at a time; DVC locks a project against a second one anyway.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, NoReturn

from vidops.components.errors import VidopsError

# what DVC's add, push, pull, checkout and commit import, found with `python -X importtime`; a child imports the rest
PRELOAD = (
    "dvc.cli",
    "dvc.cli.parser",
    "dvc.repo",
    "dvc.repo.index",
    "dvc.repo.add",
    "dvc.repo.push",
    "dvc.repo.fetch",
    "dvc.repo.checkout",
    "dvc.repo.commit",
    "dvc.repo.datasets",
    "dvc.repo.open_repo",
    "dvc.output",
    "dvc.stage",
    "dvc.data_cloud",
    "dvc_data.index",
    "dvc_data.index.push",
    "dvc_data.index.fetch",
    "dvc_data.hashfile.build",
    "dvc_data.hashfile.status",
    "dvc_render.vega_templates",
    "dvc_s3",
    "s3fs",
    "aiobotocore.session",
    "botocore.session",
    "scmrepo.git",
    "dulwich.repo",
    "dulwich.client",
    "psutil",
    "ruamel.yaml",
)


class Stopped(VidopsError):
    """A command was killed because the caller's `stop` gave a reason."""


_lock = threading.Lock()
_helper: subprocess.Popen[bytes] | None = None


def run(
    cwd: Path,
    args: Sequence[str],
    env: Mapping[str, str],
    stop: Callable[[], str | None] | None = None,
    poll_s: float = 0.5,
) -> subprocess.CompletedProcess[str]:
    """Run `dvc ARGS` in `cwd` with the environment `env`; its exit code and output. `stop`, asked every `poll_s` while
    the command runs, may return a reason to kill it (as kill -9 would): then Stopped, with the reason."""
    with _lock, tempfile.TemporaryDirectory(prefix="vidops-dvc-") as tmp:  # its output: readable by this user alone
        out, err = Path(tmp, "out"), Path(tmp, "err")
        helper = _started()
        _send(helper, {"cwd": str(cwd), "args": list(args), "env": dict(env), "out": str(out), "err": str(err)})
        pid = _reply(helper)["pid"]
        try:
            while not select.select([helper.stdout], [], [], poll_s if stop else None)[0]:
                if stop and (reason := stop()):
                    raise Stopped(reason)
            code = _reply(helper)["code"]
        except Stopped:  # killed, as kill -9 of a `dvc` process; the helper with its reply left is replaced
            if helper.poll() is None:  # it has not reaped the child: the pid is still the command's
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            _drop(helper)
            raise
        except BaseException:
            # Ctrl-C, SIGTERM, a failing `stop`: as a `dvc` process run by Popen, the command ends first
            try:
                with suppress(VidopsError):
                    _reply(helper)
            finally:
                _drop(helper)
            raise
        return subprocess.CompletedProcess(["dvc", *args], code, _read(out), _read(err))


def _started() -> subprocess.Popen[bytes]:
    """The helper, started when there is none or it has died."""
    global _helper
    if _helper is None or _helper.poll() is not None:
        # unbuffered: a reply is read up to its newline and no further, so `select` sees the next one
        _helper = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
    return _helper


@atexit.register
def _stop() -> None:
    """At exit: the helper's stdin closed; it ends once its command, if any, has."""
    if (helper := _helper) is not None:
        _drop(helper)
        try:
            helper.wait(timeout=10)
        except subprocess.TimeoutExpired:
            helper.kill()


def _send(helper: subprocess.Popen[bytes], request: dict[str, Any]) -> None:
    assert helper.stdin is not None
    try:
        helper.stdin.write(json.dumps(request).encode() + b"\n")
    except BrokenPipeError:
        raise _gone(helper) from None


def _reply(helper: subprocess.Popen[bytes]) -> dict[str, int]:
    assert helper.stdout is not None
    line = helper.stdout.readline()
    if not line:
        raise _gone(helper)
    return json.loads(line)


def _drop(helper: subprocess.Popen[bytes]) -> None:
    """Start a new helper for the next command; this one ends when its stdin closes."""
    global _helper
    _helper = None
    with suppress(OSError):
        assert helper.stdin is not None
        helper.stdin.close()


def _gone(helper: subprocess.Popen[bytes]) -> VidopsError:
    _drop(helper)
    return VidopsError(
        f"the process that runs DVC's commands (pid {helper.pid}) stopped (exit code {helper.wait(timeout=10)}); "
        "the command may not have finished: run it again"
    )


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def serve() -> None:
    """The helper: import DVC, then for each request on stdin fork a child that runs it; reply its pid, then its
    code."""
    replies = os.dup(1)
    os.dup2(2, 1)  # what DVC's imports print goes to stderr, not into the replies
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the command (its child), not the helper of the next
    for name in PRELOAD:
        with suppress(ImportError):  # another DVC may lack one: its child imports what it needs
            importlib.import_module(name)
    for line in sys.stdin.buffer:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request, replies)
        os.write(replies, json.dumps({"pid": pid}).encode() + b"\n")
        _, status = os.waitpid(pid, 0)
        os.write(replies, json.dumps({"code": os.waitstatus_to_exitcode(status)}).encode() + b"\n")


def _child(request: dict[str, Any], replies: int) -> NoReturn:
    """Run one DVC command as the `dvc` script would, in the request's folder and environment, into its output files."""
    code = 255
    try:
        os.close(replies)  # the caller sees the helper's end, not a child's
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in the `dvc` script: DVC says "interrupted"
        for fd, path, flags in (
            (0, os.devnull, os.O_RDONLY),
            (1, request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
            (2, request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        ):
            opened = os.open(path, flags, 0o600)
            os.dup2(opened, fd)
            os.close(opened)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        from dvc.cli import main

        code = main(request["args"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # any other failure: named in the command's stderr, as DVC's own script would
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with suppress(Exception):  # a closed stream has nothing left to lose
                stream.flush()
        os._exit(code)


if __name__ == "__main__":
    serve()

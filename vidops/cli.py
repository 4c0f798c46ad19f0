"""The `vidops` command: its parser, and how an error reaches the terminal.

Each command is a function of a module of vidops/commands/, which adds its own parser; the options every project
command shares (`--root`, `--params`, `--set`) are declared once, here. Heavy imports (Prefect, TensorFlow) wait until
a command needs them.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from vidops.commands import bench, data, models, pipeline, services
from vidops.commands.shared import PARAMS_FILE, STACK_ENV
from vidops.components.errors import VidopsError
from vidops.components.layout import Layout


def main(argv: Sequence[str] | None = None) -> int:
    from vidops.components.quiet import VERBOSE, quiet_libraries

    try:
        args = parser().parse_args(argv)
    except VidopsError as exc:  # a task folder or entry point that cannot be loaded: named before any work
        print(f"vidops: error: {exc}", file=sys.stderr)
        return 1
    if args.verbose:
        os.environ[VERBOSE] = "1"
    quiet_libraries()  # before any library is imported; the processes vidops starts inherit it
    # SIGTERM (kill, a stopped container, a CI time-out) unwinds like Ctrl-C: what the command started (its S3) is
    # stopped
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
        from vidops.stack.profiles import EPHEMERAL_STARTUP

        print(
            "vidops: error: Prefect's temporary API did not answer within "
            f"{EPHEMERAL_STARTUP}={os.environ.get(EPHEMERAL_STARTUP)} s "
            "(the machine is busy?): try again, raise it, or start a server with `vidops stack up`",
            file=sys.stderr,
        )
        return 1
    return 0


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _credentials_refused(exc: BaseException) -> str | None:
    """One line naming the service that refused this process's credentials and the variables to set, when that is what
    failed (anywhere in the exception's chain); None otherwise."""
    from botocore.exceptions import ClientError
    from prefect.exceptions import PrefectHTTPStatusError

    from vidops.components.tracking import refused_credentials

    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, PrefectHTTPStatusError) and seen.response.status_code in (401, 403):
            api = seen.request.url.copy_with(path="/api", query=None)
            return (
                f"the Prefect API at {api} refused this client ({seen.response.status_code}): "
                f"set PREFECT_API_AUTH_STRING to the server's auth string ({STACK_ENV})"
            )
        if refused_credentials(seen):
            return (
                f"the MLflow server at {os.environ.get('MLFLOW_TRACKING_URI')} refused this client's credentials: "
                f"set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD ({STACK_ENV})"
            )
        if isinstance(seen, ClientError) and seen.response.get("Error", {}).get("Code") in (
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
        ):
            return (
                f"the S3 at {os.environ.get('AWS_ENDPOINT_URL') or 'AWS'} refused this client's keys: "
                f"set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY ({STACK_ENV})"
            )
        seen = seen.__cause__ or seen.__context__
    return None


def _profile(args: argparse.Namespace) -> AbstractContextManager[object]:
    """Point this process at the project's services: the stack's variables while it is up (unless the command is the
    embedded profile's by definition, `vidops demo`), and for a command that reads or writes models, the S3 that the
    registry's artifacts may live in (`registry_store`)."""
    root: Path | None = getattr(args, "root", None)
    if root is None:
        return nullcontext()
    from vidops.stack.seaweedfs import registry_store
    from vidops.stack.services import load_env

    layout = Layout(root.resolve())
    if args.stack_env:
        load_env(layout)
    return registry_store(layout) if args.models else nullcontext()


def parser() -> argparse.ArgumentParser:
    """The command line: every command's parser, the shared options given by the parents below."""
    top = argparse.ArgumentParser(prog="vidops", description="Workflow-orchestrated MLOps for video models.")
    top.add_argument(
        "--verbose",
        action="store_true",
        help="let libraries talk: TensorFlow's C++ lines, progress bars, warnings (or set VIDOPS_VERBOSE=1)",
    )
    top.add_argument("--version", action="version", version=f"vidops {_version()}")
    commands = top.add_subparsers(required=True, metavar="COMMAND")

    project = argparse.ArgumentParser(add_help=False)
    project.add_argument("--root", "--workdir", type=Path, default=Path("."), help="the project folder (default: here)")
    project.set_defaults(stack_env=True, models=False)
    params = argparse.ArgumentParser(add_help=False)
    params.add_argument("--params", default=PARAMS_FILE, help="params file, relative to the project folder")
    overrides = argparse.ArgumentParser(add_help=False)
    overrides.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param, e.g. --set train.classification.epochs=5 (repeatable)",
    )
    for module in (pipeline, data, models, services, bench):
        module.add(commands, project=project, params=params, overrides=overrides)
    return top


def _version() -> str:
    """The installed distribution's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vidops")
    except PackageNotFoundError:
        return "(not installed)"


if __name__ == "__main__":
    sys.exit(main())

"""Real faults for the tests: the `vidops` command started as a user starts it, in a process group of its own, killed
with SIGKILL once the tool's own progress shows (a file, an object on the remote, a row in a store), never after a
fixed sleep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def cli_env(**extra: str) -> dict[str, str]:
    """A user's environment: none of the test session's MLflow, Prefect or S3 variables (mlflow.set_tracking_uri exports
    MLFLOW_TRACKING_URI for the rest of the session), the venv's programs on PATH, as in an activated venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "MLFLOW_", "PREFECT_")) and k != "TF_CPP_MIN_LOG_LEVEL"
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return {**env, **extra}


def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`vidops ARGS` in a session (and process group) of its own: killing the group kills what it started in it
    (DVC, the spawned training and extraction processes), not the test."""
    return subprocess.Popen(
        [sys.executable, "-m", "vidops", *args],
        env=env or cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run(*args: str, env: dict[str, str] | None = None, timeout_s: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vidops", *args], env=env or cli_env(), capture_output=True, text=True, timeout=timeout_s
    )


class Ended(AssertionError):
    """The command ended before the moment a fault was to be injected."""


def until(
    found: Callable[[], T],
    what: str,
    process: subprocess.Popen | None = None,
    timeout_s: float = 300,
    every_s: float = 0.05,
) -> T:
    """Poll `found` until it returns something true, and return that; fail naming `what` when `process` ends first or
    the (generous) time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = found()
        if value:
            return value
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            raise Ended(f"the command ended (exit {process.returncode}) before {what}:\n{out[-2000:]}\n{err[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s:.0f} s")
        time.sleep(every_s)


def kill_group(process: subprocess.Popen) -> None:
    """kill -9 the command's whole process group (the command and its children) and reap the command."""
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)


def group_gone(pgid: int, timeout_s: float = 60) -> bool:
    """Whether every process of the group has exited (children of a killed command die with it, not after it)."""

    def members() -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(stat.parent.name))
        return found

    deadline = time.monotonic() + timeout_s
    while members():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def s3_of(project: Path) -> dict[str, str] | None:
    """The client variables of the S3 (SeaweedFS) a vidops command started for the project, once it is up; else None."""
    import json

    record, keys = project / ".vidops" / "s3" / "running.json", project / ".vidops" / "s3" / "keys.json"
    if not record.is_file():
        return None
    return {
        **json.loads(keys.read_text()),
        "AWS_ENDPOINT_URL": json.loads(record.read_text())["url"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def s3_client(env: dict[str, str]):
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
        config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=30),
    )


def keys(client, prefix: str) -> list[str]:
    """Every object key under `prefix` in the project's bucket; [] while the server does not answer."""
    from botocore.exceptions import BotoCoreError, ClientError

    found: list[str] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket="vidops", Prefix=prefix):
            found += [o["Key"] for o in page.get("Contents", [])]
    except (BotoCoreError, ClientError):
        return []
    return found

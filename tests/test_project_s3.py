"""The project's S3 (SeaweedFS, started for a command or kept by the stack) under faults: a port taken before it binds,
a command killed while it holds the server, the server killed while DVC pushes; and every secret file readable by
its owner alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import faults
from test_versioning import _dvc, remote_key, s3_client
from vidops.components import versioning
from vidops.components.errors import VidopsError
from vidops.components.layout import Layout
from vidops.stack.seaweedfs import project_s3


def test_a_port_taken_before_seaweedfs_binds_it_is_tried_again_and_the_cause_is_named_when_every_try_fails(
    tmp_path, monkeypatch
):
    """The race no check can close: a port found free is taken by another program (here a listener of the test's) before
    SeaweedFS binds it. The start picks other ports; when every pick is taken, the error says which port and why."""
    import socket

    from vidops.stack import seaweedfs
    from vidops.stack.folders import s3_folder

    listeners = []

    def taken(grpc_too: bool = False) -> int:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listeners.append(listener)
        return listener.getsockname()[1]

    real, picks = seaweedfs._free_port, []

    def first_taken(grpc_too: bool = False) -> int:
        picks.append(grpc_too)
        return (
            taken() if len(picks) in (2, 3) else real(grpc_too)
        )  # after the S3 port's pick: the master's, then the volume's

    monkeypatch.setattr(seaweedfs, "_free_port", first_taken)  # where project_s3 and _seaweedfs pick their ports
    try:
        with project_s3(Layout(tmp_path / "once")) as env:
            assert s3_client(env).head_bucket(Bucket="vidops")["ResponseMetadata"]["HTTPStatusCode"] == 200
        monkeypatch.setattr(seaweedfs, "_free_port", taken)  # every port it picks: taken
        with (
            pytest.raises(
                VidopsError, match=r"(?s)s3-master did not start .*127\.0\.0\.1:\d+: bind: address already in use"
            ),
            project_s3(Layout(tmp_path / "never")),
        ):
            pass
    finally:
        for listener in listeners:
            listener.close()
    assert not (s3_folder(Layout(tmp_path / "never")) / seaweedfs.S3_RECORD).exists()


def test_the_remote_keys_and_every_file_of_secrets_are_readable_by_their_owner_alone(tmp_path):
    from vidops.stack.folders import folder, s3_folder
    from vidops.stack.seaweedfs import _seaweedfs
    from vidops.stack.services import ENV_FILE, SECRETS, Ports, _env, _mlflow_env, _write_env

    project = Layout(tmp_path / "project")
    project.root.mkdir()
    versioning.set_remote(project.root, "s3://vidops/dvc", "http://127.0.0.1:9", ("AKIDEXAMPLE", "-secret"))
    private = project.root / ".dvc" / "config.local"
    assert "-secret" in private.read_text() and private.stat().st_mode & 0o777 == 0o600
    assert "-secret" not in (project.root / ".dvc" / "config").read_text()
    env = _env(project, Ports(prefect=1, mlflow=2, s3=9))  # every credential of the stack, as `up` makes them
    _seaweedfs(s3_folder(project), 9, env)
    _mlflow_env(folder(project), env, None)
    _write_env(folder(project) / ENV_FILE, env)
    holders = {
        s3_folder(project) / "keys.json": "AWS_SECRET_ACCESS_KEY",
        s3_folder(project) / "s3.json": "AWS_SECRET_ACCESS_KEY",
        folder(project) / ENV_FILE: "MLFLOW_TRACKING_PASSWORD",
        folder(project) / SECRETS: "PREFECT_API_AUTH_STRING",
    }
    for secret, name in holders.items():
        assert env[name].split(":")[-1] in secret.read_text() and secret.stat().st_mode & 0o777 == 0o600, secret
    for secret in (
        s3_folder(project) / "security.toml",
        folder(project) / "mlflow-auth.ini",
        folder(project) / "mlflow-auth.db",
    ):
        assert secret.stat().st_mode & 0o777 == 0o600, (
            secret
        )  # SeaweedFS's signing keys; MLflow's users and their password hashes


def _started_s3(project: Layout, command: subprocess.Popen, timeout_s: float = 120) -> dict:
    """The SeaweedFS record `command` wrote once its S3 was up."""
    import time

    record = project.state / "s3" / "running.json"
    deadline = time.monotonic() + timeout_s
    while not record.is_file():
        if command.poll() is not None:
            raise AssertionError(
                f"the command ended ({command.returncode}) before its S3 was up: {command.communicate()[1]}"
            )
        assert time.monotonic() < deadline, "the command hung before its S3 was up"
        time.sleep(0.05)
    return json.loads(record.read_text())


def _bulky(project: Layout, tiny_dataset: Path, tiny_params, files: int = 200, size: int = 64 * 2**10) -> None:
    """The classification task's dataset, the tiny clips and `files` more files of random bytes: enough that a push
    is seen mid-flight (a few seconds of it on the 2-core CI machine)."""
    shutil.copytree(tiny_dataset, project.raw("demo"))
    (project.raw("demo") / "bulk").mkdir()
    for i in range(files):
        (project.raw("demo") / "bulk" / f"{i:04d}.bin").write_bytes(os.urandom(size))
    params = tiny_params.to_yaml_dict() | {"tasks": ["classification"], "datasets": {"classification": "demo"}}
    (project.root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _remote_is_the_cache(project: Layout) -> None:
    """While the project's S3 is up: the remote holds every object of the DVC cache once, byte for byte, and nothing
    else (no stray temporary object, no unfinished multipart upload), and `dvc status -c` agrees."""
    cache = project.root / ".dvc" / "cache"
    expected = {
        f"dvc/{path.relative_to(cache).as_posix()}": path for path in (cache / "files").rglob("*") if path.is_file()
    }
    client = faults.s3_client(faults.s3_of(project.root))
    remote = faults.keys(client, "")
    assert len(remote) == len(set(remote)) and sorted(remote) == sorted(expected)
    for key, path in expected.items():
        assert client.get_object(Bucket="vidops", Key=key)["Body"].read() == path.read_bytes(), key
    assert not client.list_multipart_uploads(Bucket="vidops").get("Uploads")
    assert "in sync" in _dvc(project.root, "status", "-c")


@pytest.mark.slow
def test_a_killed_command_leaves_no_s3_running_and_the_next_one_clears_an_orphan(tiny_dataset, tiny_params, tmp_path):
    import signal
    import tempfile

    from vidops.commands.pipeline import version_datasets
    from vidops.stack.processes import _alive
    from vidops.stack.seaweedfs import project_store

    project = Layout(tmp_path / "project")
    _bulky(project, tiny_dataset, tiny_params)
    push = ("data", "push", "--root", str(project.root))
    sockets = lambda service: [
        p
        for process in (service, *service["parts"])
        for arg in process["argv"]
        if ".grpc=" in arg
        for p in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{arg.split('=', 1)[1]}.sock")
    ]

    # SIGTERM: the command unwinds, stops its S3 and removes its sockets
    command = faults.start(*push)
    s3 = _started_s3(project, command)
    command.send_signal(signal.SIGTERM)
    _, err = command.communicate(timeout=120)
    assert command.returncode == 130 and "interrupted" in err, err
    assert not _alive(s3) and not sockets(s3) and not (project.state / "s3" / "running.json").exists()

    # kill -9 of the command's process group (vidops and DVC) while DVC is uploading: SeaweedFS, in a session of its
    # own, outlives it; the remote holds some files, and no listing of the version
    command = faults.start(*push)
    orphan = _started_s3(project, command)
    client = faults.s3_client(faults.s3_of(project.root))
    faults.until(lambda: faults.keys(client, "dvc/files/"), "a first object on the remote", command)
    faults.kill_group(command)
    assert faults.group_gone(command.pid), "DVC outlived the killed command"
    version = versioning.read_version(project.raw("demo"))  # pinned by `dvc add` before the push began
    arrived = faults.keys(client, "dvc/")
    assert 0 < len(arrived) < version.files and remote_key("dvc", version.md5) not in arrived, len(arrived)
    assert _alive(orphan)

    # the next command stops the orphan, and its push (`vidops data push`'s, here in this process to check the remote
    # while its S3 is up) completes what the killed one left
    with project_store(project):
        assert not _alive(orphan)
        assert version_datasets(project, tiny_params.model_copy(update={"tasks": ["classification"]})) == [version]
        _remote_is_the_cache(project)


@pytest.mark.slow
def test_s3_stopped_during_a_push_is_named_and_a_rerun_after_its_restart_completes(tiny_dataset, tiny_params, tmp_path):
    """SeaweedFS killed with -9 while `vidops data push` uploads: the command fails with one line naming the S3 server
    and the remote; the restarted server holds no listing of the half-pushed version; a re-run completes it."""
    import signal

    from vidops.commands.pipeline import version_datasets
    from vidops.stack.seaweedfs import project_store

    project = Layout(tmp_path / "project")
    _bulky(project, tiny_dataset, tiny_params)
    command = faults.start("data", "push", "--root", str(project.root))
    s3 = _started_s3(project, command)
    client = faults.s3_client(faults.s3_of(project.root))
    faults.until(lambda: faults.keys(client, "dvc/files/"), "a first object on the remote", command)
    os.kill(s3["pid"], signal.SIGKILL)
    _, err = command.communicate(timeout=600)
    assert command.returncode == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(
        f"vidops: error: the project's S3 (SeaweedFS at {s3['url']}, pid {s3['pid']}) stopped while the command ran"
    ), err
    assert (
        "dvc push to s3://vidops/dvc stopped: the S3 server went away; the remote holds no listing" in err
        and not (project.state / "s3" / "running.json").exists()
    )

    version = versioning.read_version(project.raw("demo"))
    with project_store(project):  # SeaweedFS again, on the same data
        arrived = faults.keys(faults.s3_client(faults.s3_of(project.root)), "dvc/")
        assert 0 < len(arrived) < version.files and remote_key("dvc", version.md5) not in arrived, len(arrived)
        assert version_datasets(project, tiny_params.model_copy(update={"tasks": ["classification"]})) == [version]
        _remote_is_the_cache(project)

"""Server processes: started in sessions of their own with their logs, ready when their port is their own and their
readiness check passes, watched (still the program started: a pid can be reused) and stopped by process group; free
ports, and starts tried again when another program takes a port between its check and the server's bind."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil

from vidops.components.errors import VidopsError


def _start(
    home: Path,
    name: str,
    argv: list[str],
    env: dict[str, str],
    url: str,
    ready: Callable[[str], bool],
    timeout_s: float = 120,
) -> dict:
    """Start `argv` in its own session, logging to logs/<name>.log; wait until `ready(url)`."""
    (home / "logs").mkdir(exist_ok=True)
    log = home / "logs" / f"{name}.log"
    with log.open("ab") as out:
        written = out.tell()  # the log is appended to across starts: this start's lines follow
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=home,
            start_new_session=True,
        )
    service = {"name": name, "pid": process.pid, "argv": argv, "url": url, "log": str(log)}
    deadline = time.monotonic() + timeout_s
    port = urllib.parse.urlsplit(url).port if url.startswith("http") else None
    # ready only when the port is the server's own: another program that took it in the meantime would answer instead
    while not ((port is None or _listens(process.pid, port)) and ready(url)):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop([service])
            with log.open("rb") as lines:
                lines.seek(written)
                said = lines.read().decode(errors="replace")
            taken = ADDRESS_IN_USE.search(said)
            # a Go program's last words precede its stack dump
            last = said.split("\ngoroutine ", 1)[0].strip().splitlines()[-5:]
            message = f"{name} did not start ({log}):\n  " + "\n  ".join(last)
            raise PortTaken(message, int(taken[1])) if taken else VidopsError(message)
        time.sleep(0.5)
    return service


class PortTaken(VidopsError):
    """A server could not bind its port: something took it between our check and the server's start."""

    def __init__(self, message: str, port: int) -> None:
        super().__init__(message)
        self.port = port


# Go's "listen tcp 127.0.0.1:8333: bind: address already in use"; uvicorn's "... ('127.0.0.1', 4200): address already
# in use"
ADDRESS_IN_USE = re.compile(r"127\.0\.0\.1'?[:,] ?(\d+)\)?: (?:bind: )?address already in use")
T = TypeVar("T")
# a port found free is taken by another program before the server binds it: rare, never three times running
PORT_TRIES = 3


def _again_if_taken(start: Callable[[], T], retry: Callable[[int], bool] = lambda port: True) -> T:
    """`start()`, called again (PORT_TRIES times in all) while it fails because another program took a port it had
    found free before its server bound it, and `retry(that port)`; a start that picks its ports afresh each call."""
    for attempt in range(1, PORT_TRIES + 1):
        try:
            return start()
        except PortTaken as exc:
            if attempt == PORT_TRIES or not retry(exc.port):
                raise
    raise AssertionError("PORT_TRIES >= 1")


def _listens(group: int, port: int) -> bool:
    """A process of process group `group` (a server started in a session of its own, or a worker it forked) listens on
    `port`: one of its TCP sockets (IPv4 or IPv6) is in LISTEN there."""
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == group and any(
                connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
                for connection in psutil.Process(pid).net_connections(kind="tcp")
            ):
                return True
        except (OSError, psutil.Error):  # gone, or not ours to read
            continue
    return False


def _listening(url: str) -> bool:
    """Something accepts connections at the URL's port."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", int(url.rsplit(":", 1)[1]))) == 0


def _http(path: str) -> Callable[[str], bool]:
    def ready(url: str) -> bool:
        try:
            with urllib.request.urlopen(url + path, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    return ready


# SeaweedFS's master and volume server (with -preStopSeconds=0) exit soon after SIGTERM. The filer waits for its gRPC
# streams (its own S3 gateway's subscription never ends) long past the grace before it closes its store, so it is killed
# after the grace: its store (LevelDB) has written every change to its journal, which the next start replays.
GRACE_S = {"s3": 2.0, "s3-volume": 2.0, "s3-master": 2.0}  # a part alone is stopped when the start fails


def _stop(services: list[dict], timeout_s: float = 30) -> list[str]:
    """SIGTERM each live service's process groups (its own and its parts', together), newest service first; SIGKILL what
    is left after its grace period. The names of the services that were running."""
    stopped = []
    for service in reversed(services):
        processes = [p for p in (service, *service.get("parts", [])) if _running(p)]
        for process in processes:
            os.killpg(process["pid"], signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S.get(service["name"], timeout_s)
        while any(map(_running, processes)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for process in (service, *service.get("parts", [])):
            if _running(process):
                os.killpg(process["pid"], signal.SIGKILL)
            _remove_sockets(process)
        if processes:
            stopped.append(service["name"])
    return stopped


def _remove_sockets(process: dict) -> None:
    """SeaweedFS leaves unix sockets in the temporary folder, named by one of its ports
    (seaweedfs-master-grpc-<port>.sock, seaweedfs-s3-<port>.sock, seaweedfs-filer-<port>.sock): remove its own."""
    flags = (arg.split("=", 1) for arg in process["argv"] if arg.startswith("-") and "=" in arg)
    ports = {value for flag, value in flags if "port" in flag and value != "0"}
    for port in ports:
        for socket_file in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
            socket_file.unlink(missing_ok=True)


def _alive(service: dict) -> bool:
    """The service's process and each of its parts still run, each still the program that was started."""
    return all(_running(process) for process in (service, *service.get("parts", [])))


def _running(process: dict) -> bool:
    """The recorded process still runs, and is still the program started (a pid can be reused)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(process["pid"], os.WNOHANG)  # reap it, when this process started it
    try:
        found = psutil.Process(process["pid"])
        cmdline, state = found.cmdline(), found.status()
    except psutil.Error:  # gone (a zombie's cmdline is gone too), or not ours to read
        return False
    arguments = process["argv"][1:]  # a script's cmdline starts with its interpreter
    return state != psutil.STATUS_ZOMBIE and cmdline[-len(arguments) :] == arguments


def _free(port: int) -> bool:
    """Nothing listens on the port (as the servers do, ignore connections of a past run still in TIME_WAIT)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


GRPC_OFFSET = 10000  # SeaweedFS's gRPC port is its HTTP port + 10000 unless told otherwise


def _free_port(grpc_too: bool = False) -> int:
    """A port nothing listens on; with `grpc_too`, one whose SeaweedFS gRPC port (+10000) is free as well."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not grpc_too or (port + GRPC_OFFSET <= 65535 and _free(port + GRPC_OFFSET)):
            return port

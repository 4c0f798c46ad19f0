"""`vidops stack up|down|status`: the stack profile on one machine.

SeaweedFS serving S3 with access keys, an MLflow tracking server (UI included), a Prefect
server with its UI, and a Prefect process worker, all on 127.0.0.1. Their data lives under
`<project>/.vidops/` and survives a restart; `stack.json` records what `up` started, so
`down` stops exactly that, and `env` holds the variables that point vidops (and you, after
`set -a; . .vidops/stack/env; set +a`) at them.

The project's S3 (data, keys) lives in `<project>/.vidops/s3/` for both profiles: the stack
serves it while it is up, and the embedded profile starts it for as long as a command needs
it (`project_s3`), so what `vidops demo` pushed is there when the stack comes up.

The project has one MLflow registry too: the stack's server serves the embedded store
(`.vidops/mlflow.db`), so the demo's champions are the stack's and the reverse. An
experiment keeps the artifact location it was made with: local files under
`.vidops/mlartifacts` when the embedded profile made it, `s3://vidops/mlflow/<id>` when the
stack did (written by the clients themselves, not proxied, so that the embedded profile can
read them with the project's S3 started: `registry_store`).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from components import versioning
from components.errors import VidopsError
from components.io import atomic_path, write_json, write_text
from components.layout import Layout
from components.programs import program
from flows.profiles import embedded_tracking, tracking

POOL = "vidops-process"  # the process work pool the stack's worker serves
BUCKET = "vidops"  # MLflow's artifacts (and DVC's remote) in the stack's S3
ARTIFACTS = f"s3://{BUCKET}/mlflow"  # where experiments made on the stack keep their artifacts
ENV_FILE = "env"
RECORD = "stack.json"


@dataclass(frozen=True)
class Ports:
    prefect: int = 4200
    mlflow: int = 5000
    s3: int = 8333


def folder(layout: Layout) -> Path:
    return layout.state / "stack"


def s3_folder(layout: Layout) -> Path:
    """The project's S3 server: its data, keys and log, the same for the stack and the embedded profile."""
    return layout.state / "s3"


def up(layout: Layout, ports: Ports) -> dict[str, str]:
    """Start the four services (refusing a taken port before starting any); their URLs by name."""
    home = folder(layout)
    if _record(home):
        raise VidopsError(f"{home / RECORD}: the stack is already up (`vidops stack status`); `vidops stack down` first")
    for name, port in asdict(ports).items():
        if not _free(port):
            raise VidopsError(f"port {port} on 127.0.0.1 ({name}) is taken by another program; stop it or pick another with --{name}-port")
    home.mkdir(parents=True, exist_ok=True)
    env = _env(layout, ports)
    started: dict[str, dict] = {}  # in start order: down stops them newest first
    try:
        started["s3"] = _start_s3(layout, ports.s3, env)
        mlflow = [program("mlflow"), "server", "--host", "127.0.0.1", "--port", str(ports.mlflow), "--workers", "1",
                  "--backend-store-uri", embedded_tracking(layout).uri, "--default-artifact-root", ARTIFACTS, "--no-serve-artifacts"]  # fmt: skip
        started["mlflow"] = _start(home, "mlflow", mlflow, env, env["MLFLOW_TRACKING_URI"], _http("/health"))
        prefect = [program("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(ports.prefect)]
        # the UI asks its settings for the API it talks to, which is PREFECT_SERVER_API_PORT's (4200) unless told
        server_env = {**env, "PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_UI_API_URL": env["PREFECT_API_URL"]}
        del server_env["PREFECT_API_URL"]  # the server is not a client of itself
        started["prefect"] = _start(home, "prefect", prefect, server_env, f"http://127.0.0.1:{ports.prefect}", _http("/api/health"))
        worker = [program("prefect"), "worker", "start", "--pool", POOL, "--type", "process"]
        worker_env = {**env, "PREFECT_HOME": str(home / "worker"), "VIDOPS_ROOT": str(layout.root)}
        started["worker"] = _start(home, "worker", worker, worker_env, f"pool {POOL}", _pool_ready(env["PREFECT_API_URL"]))
    except BaseException:
        _stop(list(started.values()))
        raise
    write_json(home / RECORD, {"services": list(started.values())})
    _write_env(home / ENV_FILE, env)
    versioning.init(layout.root)  # the datasets are versioned in the stack's S3 (ingest, `dvc push`)
    _point_dvc(layout, env)
    return {name: service["url"] for name, service in started.items()}


def down(layout: Layout) -> list[str]:
    """Stop what `up` started (and nothing else); the names of the services stopped."""
    home = folder(layout)
    started = _record(home)
    stopped = _stop(started)
    for name in (RECORD, ENV_FILE):
        (home / name).unlink(missing_ok=True)
    return stopped


def status(layout: Layout) -> dict[str, tuple[str, bool]]:
    """Each service's URL and whether its process is alive."""
    return {service["name"]: (service["url"], _alive(service)) for service in _record(folder(layout))}


def load_env(layout: Layout) -> None:
    """Point this process at the project's stack while it is up; variables already set win."""
    path = folder(layout) / ENV_FILE
    if path.is_file():
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            os.environ.setdefault(key, value)


_serving: dict[Path, dict[str, str]] = {}  # the project S3s this process started, by folder: one SeaweedFS per folder


@contextmanager
def project_s3(layout: Layout) -> Iterator[dict[str, str]]:
    """The project's S3 while the block runs: the stack's when it is up, else SeaweedFS started on a free port
    and stopped afterwards (or the one this process started already). Yields the client variables (endpoint, keys,
    region); points DVC's remote at it."""
    running = {service["name"]: service for service in _record(folder(layout))}
    if "s3" in running and _alive(running["s3"]):
        env = _s3_env(layout, running["s3"]["url"])
        _point_dvc(layout, env)
        yield env
        return
    home = s3_folder(layout)
    if home in _serving:
        yield _serving[home]
        return
    _clear_orphan(home)
    port = _free_port()
    env = _s3_env(layout, f"http://127.0.0.1:{port}")
    service = _start_s3(layout, port, {**os.environ, **env})
    write_json(home / S3_RECORD, {**service, "owner": os.getpid()})  # what a later start needs to find an orphan: pid, argv
    _serving[home] = env
    gone = lambda: None if _alive(service) else "the S3 server went away"  # noqa: E731
    try:
        _point_dvc(layout, env)
        with versioning.watching(gone):
            yield env
    except VidopsError as exc:
        if _alive(service):
            raise
        # what failed was the server, not the command: say so first, with where its last words are
        raise VidopsError(f"the project's S3 (SeaweedFS at {service['url']}, pid {service['pid']}) stopped while the command ran"
                          f" (its log: {service['log']}): {exc}") from None  # fmt: skip
    finally:
        del _serving[home]
        _stop([service])
        (home / S3_RECORD).unlink(missing_ok=True)


def _clear_orphan(home: Path) -> None:
    """Stop the SeaweedFS that a vidops command started on this project's data and did not live to stop (killed with -9):
    it holds the data's lock, and every later start would fail. Found by the pid and command line recorded, never by name."""
    path = home / S3_RECORD
    if not path.is_file():
        return
    recorded = json.loads(path.read_text())
    owner_alive = Path(f"/proc/{recorded['owner']}").exists()
    if _alive(recorded) and owner_alive:
        raise VidopsError(f"{home}: the project's S3 is in use by another vidops command (pid {recorded['owner']}); try again when it ends")
    _stop([recorded])
    path.unlink(missing_ok=True)


@contextmanager
def project_store(layout: Layout) -> Iterator[None]:
    """While the block runs, this process's S3 clients (boto3, DVC) reach the project's data store: its own S3 when DVC's
    remote is the project's bucket or not set yet; a remote elsewhere (AWS S3, cluster profile) needs nothing started."""
    url = versioning.remote_url(layout.root) if versioning.is_repo(layout.root) else None
    if url not in (None, versioning.local_url(BUCKET)):
        yield
        return
    with project_s3(layout) as env, _environ(env):
        yield


@contextmanager
def registry_store(layout: Layout) -> Iterator[None]:
    """While the block runs, MLflow clients of the embedded store can read and write the artifacts of experiments made
    on the stack (in the project's S3): that S3 is started, or the stack's used, when the store has such an experiment.
    A process pointed at an MLflow server (the stack's env) has its S3 variables already."""
    if tracking(layout).uri != embedded_tracking(layout).uri or not _artifacts_in_s3(layout):
        yield
        return
    with project_s3(layout) as env, _environ({**env, "MLFLOW_S3_ENDPOINT_URL": env["AWS_ENDPOINT_URL"]}):
        yield


def _artifacts_in_s3(layout: Layout) -> bool:
    """The embedded MLflow store has an experiment whose artifacts are in the project's S3 (one the stack made)."""
    store = Path(embedded_tracking(layout).uri.removeprefix("sqlite:///"))
    if not store.is_file():
        return False
    try:
        with closing(sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True)) as db:
            return db.execute("SELECT 1 FROM experiments WHERE artifact_location LIKE ? LIMIT 1", (f"{ARTIFACTS}/%",)).fetchone() is not None
    except sqlite3.Error:  # a store MLflow has not made its tables in yet
        return False


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """These environment variables set while the block runs, the previous values back afterwards."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _s3_env(layout: Layout, endpoint: str) -> dict[str, str]:
    """What an S3 client of the project's server needs; the keys are made once and kept (mode 600)."""
    _adopt_stack_s3(layout)
    keys = s3_folder(layout) / "keys.json"
    if not keys.is_file():
        write_json(keys, {"AWS_ACCESS_KEY_ID": "vidops" + secrets.token_hex(6), "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30)}, secret=True)
    return {**json.loads(keys.read_text()), "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}


def _adopt_stack_s3(layout: Layout) -> None:
    """Move a stack's S3 data and keys from where they were kept before the project had one S3 (.vidops/stack/)."""
    old, new = folder(layout), s3_folder(layout)
    if (old / "seaweedfs").is_dir() and not (new / "data").exists():
        new.mkdir(parents=True, exist_ok=True)
        (old / "seaweedfs").rename(new / "data")
        if (old / "s3-keys.json").is_file() and not (new / "keys.json").exists():
            (old / "s3-keys.json").rename(new / "keys.json")


def _point_dvc(layout: Layout, env: dict[str, str]) -> None:
    """A DVC project's default remote, when it is the project's own bucket, gets this server's endpoint and keys
    (in .dvc/config.local, which git ignores); a remote elsewhere (AWS S3) is left alone."""
    if versioning.is_repo(layout.root) and versioning.remote_url(layout.root) in (None, versioning.local_url(BUCKET)):
        versioning.set_remote(layout.root, versioning.local_url(BUCKET), env["AWS_ENDPOINT_URL"], (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]))


def _start_s3(layout: Layout, port: int, env: dict[str, str]) -> dict:
    """SeaweedFS serving the project's S3 on `port`, once its bucket exists."""
    home = s3_folder(layout)
    home.mkdir(parents=True, exist_ok=True)
    return _start(home, "s3", _seaweedfs(home, port, env), env, f"http://127.0.0.1:{port}", _bucket(env))


def _env(layout: Layout, ports: Ports) -> dict[str, str]:
    """The variables every service and client of the stack gets."""
    s3 = _s3_env(layout, f"http://127.0.0.1:{ports.s3}")
    return {
        **os.environ,
        **s3,
        "MLFLOW_S3_ENDPOINT_URL": s3["AWS_ENDPOINT_URL"],
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports.mlflow}",
        "PREFECT_API_URL": f"http://127.0.0.1:{ports.prefect}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "VIDOPS_RESULTS": f"s3://{BUCKET}/prefect-results",  # the pipeline's cached task results
        "GX_ANALYTICS_ENABLED": "false",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def _write_env(path: Path, env: dict[str, str]) -> None:
    names = ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "VIDOPS_RESULTS", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    with atomic_path(path) as tmp:
        write_text(tmp, "".join(f"{name}={env[name]}\n" for name in names), secret=True)  # it holds the S3 keys


def _seaweedfs(home: Path, s3_port: int, env: dict[str, str]) -> list[str]:
    """`weed server` with S3 and its identities; every other port it opens is a free one, on loopback only."""
    identity = {"name": "vidops", "credentials": [{"accessKey": env["AWS_ACCESS_KEY_ID"], "secretKey": env["AWS_SECRET_ACCESS_KEY"]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}  # fmt: skip
    write_json(home / "s3.json", {"identities": [identity]}, secret=True)
    (home / "data").mkdir(exist_ok=True)
    inner = {f"-{flag}": str(_free_port()) for flag in ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                                                         "filer.port.grpc", "s3.port.grpc", "iam.port")}  # fmt: skip
    return [program("weed"), "server", f"-dir={home / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            "-s3", f"-s3.port={s3_port}", f"-s3.config={home / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            *(f"{flag}={port}" for flag, port in inner.items())]  # fmt: skip


def _start(home: Path, name: str, argv: list[str], env: dict[str, str], url: str, ready: Callable[[str], bool], timeout_s: float = 120) -> dict:
    """Start `argv` in its own session, logging to logs/<name>.log; wait until `ready(url)`."""
    (home / "logs").mkdir(exist_ok=True)
    log = home / "logs" / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=home, start_new_session=True)
    service = {"name": name, "pid": process.pid, "argv": argv, "url": url, "log": str(log)}
    deadline = time.monotonic() + timeout_s
    while not ready(url):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop([service])
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise VidopsError(f"{name} did not start ({log}):\n  " + "\n  ".join(tail))
        time.sleep(0.5)
    return service


def _http(path: str) -> Callable[[str], bool]:
    def ready(url: str) -> bool:
        try:
            with urllib.request.urlopen(url + path, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    return ready


def _bucket(env: dict[str, str]) -> Callable[[str], bool]:
    """Ready when the bucket exists (SeaweedFS takes a few seconds before it accepts one)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"])  # fmt: skip

    def ready(url: str) -> bool:
        try:
            if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
                client.create_bucket(Bucket=BUCKET)
            return True
        except (BotoCoreError, ClientError):
            return False

    return ready


def _pool_ready(api: str) -> Callable[[str], bool]:
    """Ready when the worker has made its pool and says it is polling it."""

    def ready(url: str) -> bool:
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{api}/work_pools/{POOL}/workers/filter", b"{}", {"Content-Type": "application/json"}), timeout=2) as r:
                return bool(json.loads(r.read()))
        except OSError:
            return False

    return ready


# SeaweedFS's volume server has flushed and closed within a second of SIGTERM; its master then lingers for 25 s
GRACE_S = {"s3": 5.0}
S3_RECORD = "running.json"  # in .vidops/s3/: the SeaweedFS a command started for itself, while it runs


def _stop(services: list[dict], timeout_s: float = 30) -> list[str]:
    """SIGTERM each live service's process group (newest first), SIGKILL what is left after its grace period."""
    stopped = []
    for service in reversed(services):
        if not _alive(service):
            continue
        os.killpg(service["pid"], signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S.get(service["name"], timeout_s)
        while _alive(service) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(service):
            os.killpg(service["pid"], signal.SIGKILL)
        _remove_sockets(service)
        stopped.append(service["name"])
    return stopped


def _remove_sockets(service: dict) -> None:
    """SeaweedFS leaves a unix socket per gRPC port in the temporary folder (seaweedfs-master-grpc-<port>.sock): remove its own."""
    ports = {arg.split("=", 1)[1] for arg in service["argv"] if arg.startswith("-") and ".grpc=" in arg}
    for port in ports:
        for socket_file in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
            socket_file.unlink(missing_ok=True)


def _alive(service: dict) -> bool:
    """The recorded process still runs, and is still the program `up` started (a pid can be reused)."""
    try:
        os.waitpid(service["pid"], os.WNOHANG)  # reap it, when this process started it
    except ChildProcessError:
        pass
    try:
        cmdline = Path(f"/proc/{service['pid']}/cmdline").read_bytes().split(b"\0")[:-1]
        state = Path(f"/proc/{service['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    arguments = [a.encode() for a in service["argv"][1:]]  # a script's cmdline starts with its interpreter
    return state != "Z" and cmdline[-len(arguments):] == arguments


def _record(home: Path) -> list[dict]:
    """What `up` started, in start order."""
    path = home / RECORD
    return json.loads(path.read_text())["services"] if path.is_file() else []


def _free(port: int) -> bool:
    """Nothing listens on the port (as the servers do, ignore connections of a past run still in TIME_WAIT)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

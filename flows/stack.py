"""`vidops stack up|down|status`: the stack profile on one machine.

SeaweedFS serving S3 with access keys, an MLflow tracking server (UI included), a Prefect
server with its UI, and a Prefect process worker, all on 127.0.0.1. Their data lives under
`<project>/.vidops/` and survives a restart; `stack.json` records what `up` started, so
`down` stops exactly that, and `env` holds the variables that point vidops (and you, after
`set -a; . .vidops/stack/env; set +a`) at them.

The project's S3 (data, keys) lives in `<project>/.vidops/s3/` for both profiles: the stack
serves it while it is up, and the embedded profile starts it for as long as a command needs
it (`project_s3`), so what `vidops demo` pushed is there when the stack comes up.

Closed by default: Prefect's API takes only requests that carry its auth string and answers only its own
UI's origin; MLflow runs its basic-auth app (one admin account, made on the first `up`) and refuses other
Host headers and origins; SeaweedFS serves S3 to its keys only, and its filer and volume ports refuse
requests without a JWT signed by keys made at each start. Every credential lives in a mode-600 file
(`secrets.json`, `env`, the SeaweedFS configuration) and the environment, never on a command line.

The project has one MLflow registry too: the stack's server serves the embedded store
(`.vidops/mlflow.db`), so the demo's champions are the stack's and the reverse. An
experiment keeps the artifact location it was made with: local files under
`.vidops/mlartifacts` when the embedded profile made it, `s3://vidops/mlflow/<id>` when the
stack did (written by the clients themselves, not proxied, so that the embedded profile can
read them with the project's S3 started: `registry_store`).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from vidops.components import versioning
from vidops.components.errors import VidopsError
from vidops.components.io import atomic_path, write_json, write_text
from vidops.components.layout import Layout
from vidops.components.programs import program
from vidops.flows.postgres import Database
from vidops.flows.profiles import embedded_tracking, tracking

POOL = "vidops-process"  # the process work pool the stack's worker serves
BUCKET = "vidops"  # MLflow's artifacts (and DVC's remote) in the stack's S3
ARTIFACTS = f"s3://{BUCKET}/mlflow"  # where experiments made on the stack keep their artifacts
ENV_FILE = "env"
RECORD = "stack.json"
SECRETS = "secrets.json"  # the Prefect auth string and MLflow's admin password: made once, kept across restarts
MLFLOW_USER = "vidops"
DATABASE_URLS = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")  # a caller's would win over ours


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


def up(layout: Layout, ports: Ports, database: Database | None = None, workers: int = 1) -> dict[str, str]:
    """Start the services (refusing a taken port before starting any), `workers` process workers among them; Prefect
    and MLflow keep their state in `database` (PostgreSQL; its databases made when missing) or, without one, in SQLite
    under the project. Their URLs by name."""
    home = folder(layout)
    if _record(home):
        raise VidopsError(f"{home / RECORD}: the stack is already up (`vidops stack status`); `vidops stack down` first")
    if workers < 1:
        raise VidopsError(f"--workers {workers}: the stack needs at least one worker")
    for name, port in asdict(ports).items():
        if not _free(port):
            raise VidopsError(f"port {port} on 127.0.0.1 ({name}) is taken by another program; stop it or pick another with --{name}-port")
    if database:
        database.ensure()
    home.mkdir(parents=True, exist_ok=True)
    env = _env(layout, ports)
    store = database.uri("mlflow") if database else embedded_tracking(layout).uri
    started: dict[str, dict] = {}  # in start order: down stops them newest first
    try:
        started["s3"] = _start_s3(layout, ports.s3, env)
        mlflow_env = _mlflow_env(home, env, database)
        if database:
            _migrate_mlflow(home, store, mlflow_env)
        started["mlflow"] = _start(home, "mlflow", _mlflow_server(ports.mlflow, store), mlflow_env, env["MLFLOW_TRACKING_URI"], _http("/health"))
        _check_mlflow_login(home, env, database)
        prefect = [program("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(ports.prefect)]
        origin = f"http://127.0.0.1:{ports.prefect}"
        # the UI asks its settings for the API it talks to, which is PREFECT_SERVER_API_PORT's (4200) unless told
        server_env = {**env, "PREFECT_HOME": str(home / "prefect"), "PREFECT_SERVER_UI_API_URL": env["PREFECT_API_URL"],
                      "PREFECT_SERVER_API_AUTH_STRING": env["PREFECT_API_AUTH_STRING"], "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": origin,
                      **(database.prefect_env() if database else {})}  # fmt: skip
        for client_only in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", *DATABASE_URLS):  # not a client of itself; no other store
            server_env.pop(client_only, None)
        started["prefect"] = _start(home, "prefect", prefect, server_env, origin, _http("/api/health"))
        for n in range(1, workers + 1):
            name = "worker" if n == 1 else f"worker-{n}"
            worker = [program("prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--name", name]
            worker_env = {**env, "PREFECT_HOME": str(home / name), "VIDOPS_ROOT": str(layout.root)}
            started[name] = _start(home, name, worker, worker_env, f"pool {POOL}", _pool_ready(env, name))
    except BaseException:
        _stop(list(started.values()))
        raise
    write_json(home / RECORD, {"services": list(started.values()), "database": database.uri("*") if database else None})
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


def store(layout: Layout) -> str | None:
    """Where the running stack's Prefect and MLflow keep their state, when it is PostgreSQL (`postgresql://.../PREFIX_*`)."""
    path = folder(layout) / RECORD
    return json.loads(path.read_text()).get("database") if path.is_file() else None


def client_env(layout: Layout) -> dict[str, str]:
    """The variables that make a client of the project's stack (its env file), while it is up; none when it is down."""
    path = folder(layout) / ENV_FILE
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line) if path.is_file() else {}


def load_env(layout: Layout) -> None:
    """Point this process at the project's stack while it is up; variables already set win."""
    for key, value in client_env(layout).items():
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

    def on_a_free_port() -> tuple[dict, dict[str, str]]:
        port = _free_port()
        env = _s3_env(layout, f"http://127.0.0.1:{port}")
        return _start_s3(layout, port, {**os.environ, **env}), env

    service, env = _again_if_taken(on_a_free_port)
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
    """SeaweedFS serving the project's S3 on `port`, once its bucket exists: the S3 gateway's process (with the filer),
    its master and volume server recorded as its `parts`."""
    home = s3_folder(layout)
    home.mkdir(parents=True, exist_ok=True)

    def on_free_inner_ports() -> dict:
        master, volume, gateway = _seaweedfs(home, port, env)
        parts: list[dict] = []
        try:
            for name, argv in (("s3-master", master), ("s3-volume", volume)):
                parts.append(_start(home, name, argv, env, f"http://127.0.0.1:{_flag(argv, '-port')}", _listening))
            return {**_start(home, "s3", gateway, env, f"http://127.0.0.1:{port}", _bucket(env)), "parts": parts}
        except BaseException:
            _stop(parts)
            raise

    # the master's, volume server's and gRPC ports are picked here; the S3 port is the caller's to choose again
    return _again_if_taken(on_free_inner_ports, retry=lambda taken: taken != port)


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


def _env(layout: Layout, ports: Ports) -> dict[str, str]:
    """The variables every service and client of the stack gets."""
    s3 = _s3_env(layout, f"http://127.0.0.1:{ports.s3}")
    kept = _secrets(folder(layout))
    return {
        **os.environ,
        **s3,
        "PREFECT_API_AUTH_STRING": kept["prefect_auth_string"],
        "MLFLOW_TRACKING_USERNAME": MLFLOW_USER,
        "MLFLOW_TRACKING_PASSWORD": kept["mlflow_password"],
        "MLFLOW_S3_ENDPOINT_URL": s3["AWS_ENDPOINT_URL"],
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports.mlflow}",
        "PREFECT_API_URL": f"http://127.0.0.1:{ports.prefect}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "VIDOPS_RESULTS": f"s3://{BUCKET}/prefect-results",  # the pipeline's cached task results
        "GX_ANALYTICS_ENABLED": "false",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }


def _write_env(path: Path, env: dict[str, str]) -> None:
    names = ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "VIDOPS_RESULTS", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    with atomic_path(path) as tmp:
        write_text(tmp, "".join(f"{name}={env[name]}\n" for name in names), secret=True)  # it holds every credential


def _secrets(home: Path) -> dict[str, str]:
    """The stack's own credentials, made on the first `up` and kept (mode 600): MLflow's auth database keeps the admin
    password's hash, its UI's forms are signed with the Flask key, and a browser that logged in to the Prefect UI keeps
    its auth string."""
    path = home / SECRETS
    kept = json.loads(path.read_text()) if path.is_file() else {}
    made = {"prefect_auth_string": f"vidops:{secrets.token_urlsafe(24)}", "mlflow_password": secrets.token_urlsafe(24),
            "mlflow_flask_key": secrets.token_urlsafe(32)}  # fmt: skip
    if set(made) - set(kept):
        kept = {**made, **kept}
        write_json(path, kept, secret=True)
    return kept


def _mlflow_server(port: int, store: str) -> list[str]:
    """MLflow's server with its basic-auth app on the store `store`, answering only its own address (no DNS rebinding,
    no other origin)."""
    hosts = [f"127.0.0.1:{port}", f"localhost:{port}"]
    return [program("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--app-name", "basic-auth",
            "--allowed-hosts", ",".join(hosts), "--cors-allowed-origins", ",".join(f"http://{host}" for host in hosts),
            "--backend-store-uri", store, "--default-artifact-root", ARTIFACTS, "--no-serve-artifacts"]  # fmt: skip


def _mlflow_env(home: Path, env: dict[str, str], database: Database | None) -> dict[str, str]:
    """The auth app's configuration (its user database beside the stack's data, or in PostgreSQL; nobody but the admin
    may do anything) and, through the environment only, the admin account it makes on its first start."""
    config = home / "mlflow-auth.ini"
    if database:
        users = database.uri("mlflow_auth")
    else:
        path = home / "mlflow-auth.db"
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))  # the password hashes: the owner's alone, before SQLite makes it
        path.chmod(0o600)  # made by an older vidops
        users = f"sqlite:///{path}"
    write_text(config, f"[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = {users}\n"
                       f"admin_username = {MLFLOW_USER}\nauthorization_function = mlflow.server.auth:authenticate_request_basic_auth\n", secret=True)  # fmt: skip
    return {**env, "MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_PASSWORD": env["MLFLOW_TRACKING_PASSWORD"],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": _secrets(home)["mlflow_flask_key"], **(database.password_env() if database else {})}


def _migrate_mlflow(home: Path, store: str, env: dict[str, str]) -> None:
    """Bring MLflow's store in PostgreSQL to this MLflow's schema (its server refuses an older one): tables made in a
    new database, migrations run on an old one. Logged to logs/mlflow.log."""
    (home / "logs").mkdir(exist_ok=True)
    log = home / "logs" / "mlflow.log"
    with log.open("ab") as out:
        written = out.tell()
        done = subprocess.run([program("mlflow"), "db", "upgrade", store], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=home)
    if done.returncode:
        with log.open("rb") as lines:
            lines.seek(written)
            last = lines.read().decode(errors="replace").strip().splitlines()[-3:]
        raise VidopsError(f"mlflow db upgrade {store} failed ({log}):\n  " + "\n  ".join(last))


LOGIN_TIMEOUT_S = 120


def _check_mlflow_login(home: Path, env: dict[str, str], database: Database | None) -> None:
    """The kept password opens MLflow (its auth database could be older than secrets.json)."""
    login = _basic(MLFLOW_USER + ":" + env["MLFLOW_TRACKING_PASSWORD"])
    request = urllib.request.Request(env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/experiments/search?max_results=1", headers=login)
    try:
        # the auth app's first answer hashes the admin's password (PBKDF2): seconds on a busy machine
        urllib.request.urlopen(request, timeout=LOGIN_TIMEOUT_S).close()
    except TimeoutError:
        raise VidopsError(f"MLflow at {env['MLFLOW_TRACKING_URI']} did not answer the admin's login within {LOGIN_TIMEOUT_S} s "
                          f"(its log: {home / 'logs' / 'mlflow.log'})") from None  # fmt: skip
    except urllib.error.HTTPError as exc:
        if exc.code != 401:
            raise
        if database:
            raise VidopsError(f"{database.uri('mlflow_auth')}: MLflow refused the admin password kept in {home / SECRETS}; its users were "
                              "made with another one: put that one in secrets.json, or set this one with MLflow's update-password API") from None  # fmt: skip
        raise VidopsError(f"{home / 'mlflow-auth.db'}: MLflow refused the admin password kept in {home / SECRETS}; the auth database was "
                          "made with another one: remove both files to make a new account") from None  # fmt: skip


def _basic(credentials: str) -> dict[str, str]:
    """The Authorization header of HTTP basic auth."""
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def _seaweedfs(home: Path, s3_port: int, env: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """The command lines of SeaweedFS's master, volume server, and filer with the S3 gateway, on loopback only, every port
    but S3's a free one. Three processes, not `weed server`, so that the master alone refuses every client but its own
    parts (`-whiteList=@`: they reach it over gRPC; `weed server` applies the list to the volume server too, which
    then refuses the gateway's uploads), and so anonymous requests cannot drop a bucket (`/col/delete`). The filer and
    volume server refuse any request without a JWT signed by keys only SeaweedFS holds, and every gRPC port (through which
    a client could otherwise write, delete or read anything) wants a TLS certificate signed by a CA only SeaweedFS holds
    (security.toml, read from the working folder; keys and certificates new at each start). The data folder is the one
    `weed server` used."""
    identity = {"name": "vidops", "credentials": [{"accessKey": env["AWS_ACCESS_KEY_ID"], "secretKey": env["AWS_SECRET_ACCESS_KEY"]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}  # fmt: skip
    write_json(home / "s3.json", {"identities": [identity]}, secret=True)
    jwt = "".join(f'[jwt.{name}]\nkey = "{secrets.token_urlsafe(32)}"\nexpires_after_seconds = 60\n'
                  for name in ("signing", "signing.read", "filer_signing", "filer_signing.read"))
    write_text(home / "security.toml", jwt + _grpc_tls(home / "tls"), secret=True)
    data = home / "data"
    data.mkdir(exist_ok=True)
    weed, loopback = program("weed"), ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    # each gRPC port is its HTTP port + 10000, as SeaweedFS assumes where an address names one port only (the S3
    # gateway finds its filer so: with another gRPC port it waits for it forever)
    master, volume, filer = (_free_port(grpc_too=True) for _ in range(3))
    ports = lambda port: [f"-port={port}", f"-port.grpc={port + GRPC_OFFSET}"]  # noqa: E731
    return (
        [weed, "master", f"-mdir={data}", *loopback, *ports(master), "-whiteList=@", "-telemetry=false"],
        [weed, "volume", f"-dir={data}", *loopback, *ports(volume), f"-master=127.0.0.1:{master}", "-preStopSeconds=0"],
        [weed, "filer", f"-defaultStoreDir={data}", *loopback, *ports(filer), f"-master=127.0.0.1:{master}",
         "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={_free_port()}", f"-s3.config={home / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0"],
    )  # fmt: skip


GRPC_PARTS = ("master", "volume", "filer", "s3", "client")  # security.toml's [grpc.<part>]: "client" is how a part calls another


def _grpc_tls(folder: Path) -> str:
    """security.toml's `[grpc]` sections: a new CA and, for each part of SeaweedFS, a certificate for 127.0.0.1 that it
    signs, so that SeaweedFS's gRPC ports take only mutually authenticated TLS from its own parts. Keys are mode 600 and
    the CA's key is never written: nothing can sign another certificate once this returns."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(mode=0o700, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # noqa: E731
    ca_key = ec.generate_private_key(ec.SECP256R1())

    def certificate(cn: str, key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name("vidops seaweedfs ca"))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=3650))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))  # fmt: skip
        if ca:
            usage = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                                  key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False)  # fmt: skip
            builder = builder.add_extension(usage, critical=True)
        else:
            builder = (builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                       .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))  # fmt: skip
        return builder.sign(ca_key, hashes.SHA256())

    pem = lambda cert: cert.public_bytes(serialization.Encoding.PEM).decode()  # noqa: E731
    write_text(folder / "ca.crt", pem(certificate("vidops seaweedfs ca", ca_key, ca=True)))
    sections = [f'[grpc]\nca = "{folder / "ca.crt"}"\n']
    for part in GRPC_PARTS:
        key = ec.generate_private_key(ec.SECP256R1())
        write_text(folder / f"{part}.crt", pem(certificate(part, key, ca=False)))
        write_text(folder / f"{part}.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()).decode(), secret=True)  # fmt: skip
        sections.append(f'[grpc.{part}]\ncert = "{folder / f"{part}.crt"}"\nkey = "{folder / f"{part}.key"}"\n')
    return "".join(sections)


def _flag(argv: list[str], name: str) -> str:
    """The value of `-name=value` in a command line."""
    return next(arg.split("=", 1)[1] for arg in argv if arg.startswith(f"{name}="))


def _listening(url: str) -> bool:
    """Something accepts connections at the URL's port."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", int(url.rsplit(":", 1)[1]))) == 0


def _start(home: Path, name: str, argv: list[str], env: dict[str, str], url: str, ready: Callable[[str], bool], timeout_s: float = 120) -> dict:
    """Start `argv` in its own session, logging to logs/<name>.log; wait until `ready(url)`."""
    (home / "logs").mkdir(exist_ok=True)
    log = home / "logs" / f"{name}.log"
    with log.open("ab") as out:
        written = out.tell()  # the log is appended to across starts: this start's lines follow
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=home, start_new_session=True)
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
            last = said.split("\ngoroutine ", 1)[0].strip().splitlines()[-5:]  # a Go program's last words precede its stack dump
            message = f"{name} did not start ({log}):\n  " + "\n  ".join(last)
            raise PortTaken(message, int(taken[1])) if taken else VidopsError(message)
        time.sleep(0.5)
    return service


class PortTaken(VidopsError):
    """A server could not bind its port: something took it between our check and the server's start."""

    def __init__(self, message: str, port: int) -> None:
        super().__init__(message)
        self.port = port


# Go's "listen tcp 127.0.0.1:8333: bind: address already in use"; uvicorn's "... ('127.0.0.1', 4200): address already in use"
ADDRESS_IN_USE = re.compile(r"127\.0\.0\.1'?[:,] ?(\d+)\)?: (?:bind: )?address already in use")
T = TypeVar("T")
PORT_TRIES = 3  # a port found free is taken by another program before the server binds it: rare, never three times running


def _listens(group: int, port: int) -> bool:
    """A process of process group `group` (a server started in a session of its own, or a worker it forked) listens on
    `port`: the listening socket's inode is among its open files."""
    sockets = set()
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        for row in table.read_text().splitlines()[1:] if table.exists() else ():  # tcp6: only where IPv6 is on
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                sockets.add(f"socket:[{fields[9]}]")
    for process in Path("/proc").iterdir() if sockets else ():
        try:
            if process.name.isdigit() and int((process / "stat").read_text().rsplit(")", 1)[1].split()[2]) == group:
                if sockets & {os.readlink(fd) for fd in (process / "fd").iterdir()}:
                    return True
        except OSError:  # gone, or not ours to read
            continue
    return False


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


def _pool_ready(env: dict[str, str], name: str) -> Callable[[str], bool]:
    """Ready when the worker `name` has made its pool (or found it) and says it is polling it."""
    headers = {"Content-Type": "application/json", **_basic(env["PREFECT_API_AUTH_STRING"])}

    def ready(url: str) -> bool:
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{env['PREFECT_API_URL']}/work_pools/{POOL}/workers/filter", b"{}", headers), timeout=2) as r:
                return name in {worker["name"] for worker in json.loads(r.read())}
        except OSError:
            return False

    return ready


# SeaweedFS's master and volume server (with -preStopSeconds=0) exit within a second of SIGTERM. The filer waits 15 s for
# its gRPC streams (its own S3 gateway's subscription never ends) before it closes its store, so it is killed after the
# grace: its store (LevelDB) has written every change to its journal, which the next start replays.
GRACE_S = {"s3": 2.0, "s3-volume": 2.0, "s3-master": 2.0}  # a part alone is stopped when the start fails
S3_RECORD = "running.json"  # in .vidops/s3/: the SeaweedFS a command started for itself, while it runs


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
    """SeaweedFS leaves unix sockets in the temporary folder, named by one of its ports (seaweedfs-master-grpc-<port>.sock,
    seaweedfs-s3-<port>.sock, seaweedfs-filer-<port>.sock): remove its own."""
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
    try:
        os.waitpid(process["pid"], os.WNOHANG)  # reap it, when this process started it
    except ChildProcessError:
        pass
    try:
        cmdline = Path(f"/proc/{process['pid']}/cmdline").read_bytes().split(b"\0")[:-1]
        state = Path(f"/proc/{process['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    arguments = [a.encode() for a in process["argv"][1:]]  # a script's cmdline starts with its interpreter
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


GRPC_OFFSET = 10000  # SeaweedFS's gRPC port is its HTTP port + 10000 unless told otherwise


def _free_port(grpc_too: bool = False) -> int:
    """A port nothing listens on; with `grpc_too`, one whose SeaweedFS gRPC port (+10000) is free as well."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if not grpc_too or (port + GRPC_OFFSET <= 65535 and _free(port + GRPC_OFFSET)):
            return port

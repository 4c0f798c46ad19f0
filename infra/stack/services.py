"""`vidops stack up|down|status`: the stack profile on one machine.

SeaweedFS serving S3 with access keys (`vidops.stack.seaweedfs`), an MLflow tracking server (UI included), a Prefect
server with its UI, and Prefect process workers, all on 127.0.0.1. Their data lives under `<project>/.vidops/` and
survives a restart; `stack.json` records what `up` started, so `down` stops exactly that, and `env` holds the variables
that point vidops (and you, after `set -a; . .vidops/stack/env; set +a`) at them.

Closed by default: Prefect's API takes only requests that carry its auth string and answers only its own UI's origin;
MLflow runs its basic-auth app (one admin account, made on the first `up`) and refuses other Host headers and origins;
SeaweedFS serves S3 to its keys only, and its own ports are closed as `vidops.stack.seaweedfs` says. Every credential
lives in a mode-600 file (`secrets.json`, `env`, the SeaweedFS configuration) and the environment, never on a command
line.

The project has one MLflow registry too: the stack's server serves the embedded store (`.vidops/mlflow.db`), so the
demo's champions are the stack's and the reverse. An experiment keeps the artifact location it was made with: local
files under `.vidops/mlartifacts` when the embedded profile made it, `s3://vidops/mlflow/<id>` when the stack did.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from vidops.components import tracking, versioning
from vidops.components.errors import VidopsError
from vidops.components.io import atomic_path, write_json, write_text
from vidops.components.layout import Layout
from vidops.components.programs import program
from vidops.stack.folders import RECORD, _record, folder
from vidops.stack.postgres import Database
from vidops.stack.processes import _alive, _free, _http, _start, _stop
from vidops.stack.seaweedfs import ARTIFACTS, BUCKET, _point_dvc, _s3_env, _start_s3

POOL = "vidops-process"  # the process work pool the stack's worker serves
ENV_FILE = "env"
SECRETS = "secrets.json"  # the Prefect auth string and MLflow's admin password: made once, kept across restarts
MLFLOW_USER = "vidops"
# a caller's would win over ours
DATABASE_URLS = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")


@dataclass(frozen=True)
class Ports:
    prefect: int = 4200
    mlflow: int = 5000
    s3: int = 8333


def up(layout: Layout, ports: Ports, database: Database | None = None, workers: int = 1) -> dict[str, str]:
    """Start the services (refusing a taken port before starting any), `workers` process workers among them; Prefect
    and MLflow keep their state in `database` (PostgreSQL; its databases made when missing) or, without one, in SQLite
    under the project. Their URLs by name."""
    home = folder(layout)
    if _record(home):
        raise VidopsError(
            f"{home / RECORD}: the stack is already up (`vidops stack status`); `vidops stack down` first"
        )
    if workers < 1:
        raise VidopsError(f"--workers {workers}: the stack needs at least one worker")
    for name, port in asdict(ports).items():
        if not _free(port):
            raise VidopsError(
                f"port {port} on 127.0.0.1 ({name}) is taken by another program; "
                f"stop it or pick another with --{name}-port"
            )
    if database:
        database.ensure()
    home.mkdir(parents=True, exist_ok=True)
    env = _env(layout, ports)
    store = database.uri("mlflow") if database else tracking.embedded(layout).uri
    started: dict[str, dict] = {}  # in start order: down stops them newest first
    try:
        started["s3"] = _start_s3(layout, ports.s3, env)
        mlflow_env = _mlflow_env(home, env, database)
        if database:
            _migrate_mlflow(home, store, mlflow_env)
        started["mlflow"] = _start(
            home,
            "mlflow",
            _mlflow_server(ports.mlflow, store),
            mlflow_env,
            env["MLFLOW_TRACKING_URI"],
            _http("/health"),
        )
        _check_mlflow_login(home, env, database)
        prefect = [program("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(ports.prefect)]
        origin = f"http://127.0.0.1:{ports.prefect}"
        # the UI asks its settings for the API it talks to, which is PREFECT_SERVER_API_PORT's (4200) unless told
        server_env = {
            **env,
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_SERVER_UI_API_URL": env["PREFECT_API_URL"],
            "PREFECT_SERVER_API_AUTH_STRING": env["PREFECT_API_AUTH_STRING"],
            "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": origin,
            **(database.prefect_env() if database else {}),
        }
        # not a client of itself; no other store
        for client_only in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", *DATABASE_URLS):
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
    """Where the running stack's Prefect and MLflow keep their state, when it is PostgreSQL
    (`postgresql://.../PREFIX_*`)."""
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
    names = (
        "PREFECT_API_URL",
        "PREFECT_API_AUTH_STRING",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "VIDOPS_RESULTS",
        "AWS_ENDPOINT_URL",
        "MLFLOW_S3_ENDPOINT_URL",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    )
    with atomic_path(path) as tmp:
        write_text(tmp, "".join(f"{name}={env[name]}\n" for name in names), secret=True)  # it holds every credential


def _secrets(home: Path) -> dict[str, str]:
    """The stack's own credentials, made on the first `up` and kept (mode 600): MLflow's auth database keeps the admin
    password's hash, its UI's forms are signed with the Flask key, and a browser that logged in to the Prefect UI keeps
    its auth string."""
    path = home / SECRETS
    kept = json.loads(path.read_text()) if path.is_file() else {}
    made = {
        "prefect_auth_string": f"vidops:{secrets.token_urlsafe(24)}",
        "mlflow_password": secrets.token_urlsafe(24),
        "mlflow_flask_key": secrets.token_urlsafe(32),
    }
    if set(made) - set(kept):
        kept = {**made, **kept}
        write_json(path, kept, secret=True)
    return kept


def _mlflow_server(port: int, store: str) -> list[str]:
    """MLflow's server with its basic-auth app on the store `store`, answering only its own address (no DNS rebinding,
    no other origin)."""
    hosts = [f"127.0.0.1:{port}", f"localhost:{port}"]
    return [
        program("mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--app-name",
        "basic-auth",
        "--allowed-hosts",
        ",".join(hosts),
        "--cors-allowed-origins",
        ",".join(f"http://{host}" for host in hosts),
        "--backend-store-uri",
        store,
        "--default-artifact-root",
        ARTIFACTS,
        "--no-serve-artifacts",
    ]


def _mlflow_env(home: Path, env: dict[str, str], database: Database | None) -> dict[str, str]:
    """The auth app's configuration (its user database beside the stack's data, or in PostgreSQL; nobody but the admin
    may do anything) and, through the environment only, the admin account it makes on its first start."""
    config = home / "mlflow-auth.ini"
    if database:
        users = database.uri("mlflow_auth")
    else:
        path = home / "mlflow-auth.db"
        # the password hashes: the owner's alone, before SQLite makes it
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        path.chmod(0o600)  # os.open's mode applies only to a file it makes
        users = f"sqlite:///{path}"
    write_text(
        config,
        f"[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = {users}\n"
        f"admin_username = {MLFLOW_USER}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
        secret=True,
    )
    return {
        **env,
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": env["MLFLOW_TRACKING_PASSWORD"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": _secrets(home)["mlflow_flask_key"],
        **(database.password_env() if database else {}),
    }


def _migrate_mlflow(home: Path, store: str, env: dict[str, str]) -> None:
    """Bring MLflow's store in PostgreSQL to this MLflow's schema (its server refuses an older one): tables made in a
    new database, migrations run on an old one. Logged to logs/mlflow.log."""
    (home / "logs").mkdir(exist_ok=True)
    log = home / "logs" / "mlflow.log"
    with log.open("ab") as out:
        written = out.tell()
        done = subprocess.run(
            [program("mlflow"), "db", "upgrade", store], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=home
        )
    if done.returncode:
        with log.open("rb") as lines:
            lines.seek(written)
            last = lines.read().decode(errors="replace").strip().splitlines()[-3:]
        raise VidopsError(f"mlflow db upgrade {store} failed ({log}):\n  " + "\n  ".join(last))


LOGIN_TIMEOUT_S = 120


def _check_mlflow_login(home: Path, env: dict[str, str], database: Database | None) -> None:
    """The kept password opens MLflow (its auth database could be older than secrets.json)."""
    login = _basic(MLFLOW_USER + ":" + env["MLFLOW_TRACKING_PASSWORD"])
    request = urllib.request.Request(
        env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/experiments/search?max_results=1", headers=login
    )
    try:
        # the auth app's first answer hashes the admin's password (PBKDF2): seconds on a busy machine
        urllib.request.urlopen(request, timeout=LOGIN_TIMEOUT_S).close()
    except TimeoutError:
        raise VidopsError(
            f"MLflow at {env['MLFLOW_TRACKING_URI']} did not answer the admin's login within {LOGIN_TIMEOUT_S} s "
            f"(its log: {home / 'logs' / 'mlflow.log'})"
        ) from None
    except urllib.error.HTTPError as exc:
        if exc.code != 401:
            raise
        if database:
            raise VidopsError(
                f"{database.uri('mlflow_auth')}: MLflow refused the admin password kept in {home / SECRETS}; "
                "its users were made with another one: put that one in secrets.json, "
                "or set this one with MLflow's update-password API"
            ) from None
        raise VidopsError(
            f"{home / 'mlflow-auth.db'}: MLflow refused the admin password kept in {home / SECRETS}; "
            "the auth database was made with another one: remove both files to make a new account"
        ) from None


def _basic(credentials: str) -> dict[str, str]:
    """The Authorization header of HTTP basic auth."""
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def _pool_ready(env: dict[str, str], name: str) -> Callable[[str], bool]:
    """Ready when the worker `name` has made its pool (or found it) and says it is polling it."""
    headers = {"Content-Type": "application/json", **_basic(env["PREFECT_API_AUTH_STRING"])}

    def ready(url: str) -> bool:
        try:
            with urllib.request.urlopen(
                urllib.request.Request(f"{env['PREFECT_API_URL']}/work_pools/{POOL}/workers/filter", b"{}", headers),
                timeout=2,
            ) as r:
                return name in {worker["name"] for worker in json.loads(r.read())}
        except OSError:
            return False

    return ready

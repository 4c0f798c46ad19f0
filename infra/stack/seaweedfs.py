"""The project's S3: SeaweedFS serving its bucket to its access keys, for the stack and the embedded profile alike.

Its data and keys live in `<project>/.vidops/s3/`: the stack serves it while it is up, and the embedded profile starts
it for as long as a command needs it (`project_s3`), so what `vidops demo` pushed is there when the stack comes up.
DVC's remote, when it is the project's bucket, is pointed at whichever server runs.

SeaweedFS serves S3 to its keys only; its filer and volume ports refuse requests without a JWT signed by keys made at
each start, and its gRPC ports take only TLS with certificates signed by a CA made at each start (`_grpc_tls`).

Experiments made on the stack keep their artifacts in the bucket (`ARTIFACTS`, written by the clients themselves, not
proxied by MLflow's server), so that the embedded profile can read them with the project's S3 started: `registry_store`.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import psutil

from vidops.components import tracking, versioning
from vidops.components.errors import VidopsError
from vidops.components.io import write_json, write_text
from vidops.components.layout import Layout
from vidops.components.programs import program
from vidops.stack.folders import _record, folder, s3_folder
from vidops.stack.processes import GRPC_OFFSET, _again_if_taken, _alive, _free_port, _listening, _start, _stop

BUCKET = "vidops"  # MLflow's artifacts (and DVC's remote) in the project's S3
ARTIFACTS = f"s3://{BUCKET}/mlflow"  # where experiments made on the stack keep their artifacts
S3_RECORD = "running.json"  # in .vidops/s3/: the SeaweedFS a command started for itself, while it runs


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
    # what a later start needs to find an orphan: pid, argv
    write_json(home / S3_RECORD, {**service, "owner": os.getpid()})
    _serving[home] = env
    gone = lambda: None if _alive(service) else "the S3 server went away"
    try:
        _point_dvc(layout, env)
        with versioning.watching(gone):
            yield env
    except VidopsError as exc:
        if _alive(service):
            raise
        # what failed was the server, not the command: say so first, with where its last words are
        raise VidopsError(
            f"the project's S3 (SeaweedFS at {service['url']}, pid {service['pid']}) stopped while the command ran"
            f" (its log: {service['log']}): {exc}"
        ) from None
    finally:
        del _serving[home]
        _stop([service])
        (home / S3_RECORD).unlink(missing_ok=True)


def _clear_orphan(home: Path) -> None:
    """Stop the SeaweedFS that a vidops command started on this project's data and did not live to stop
    (killed with -9): it holds the data's lock, and every later start would fail. Found by the pid and command line
    recorded, never by name."""
    path = home / S3_RECORD
    if not path.is_file():
        return
    recorded = json.loads(path.read_text())
    owner_alive = psutil.pid_exists(recorded["owner"])
    if _alive(recorded) and owner_alive:
        raise VidopsError(
            f"{home}: the project's S3 is in use by another vidops command (pid {recorded['owner']}); "
            "try again when it ends"
        )
    _stop([recorded])
    path.unlink(missing_ok=True)


@contextmanager
def project_store(layout: Layout) -> Iterator[None]:
    """While the block runs, this process's S3 clients (boto3, DVC) reach the project's data store: its own S3 when
    DVC's remote is the project's bucket or not set yet; a remote elsewhere (AWS S3, cluster profile) needs nothing
    started."""
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
    if tracking.locate(layout).uri != tracking.embedded(layout).uri or not _artifacts_in_s3(layout):
        yield
        return
    with project_s3(layout) as env, _environ({**env, "MLFLOW_S3_ENDPOINT_URL": env["AWS_ENDPOINT_URL"]}):
        yield


def _artifacts_in_s3(layout: Layout) -> bool:
    """The embedded MLflow store has an experiment whose artifacts are in the project's S3 (one the stack made)."""
    store = Path(tracking.embedded(layout).uri.removeprefix("sqlite:///"))
    if not store.is_file():
        return False
    try:
        with closing(sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True)) as db:
            return (
                db.execute(
                    "SELECT 1 FROM experiments WHERE artifact_location LIKE ? LIMIT 1", (f"{ARTIFACTS}/%",)
                ).fetchone()
                is not None
            )
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
        write_json(
            keys,
            {"AWS_ACCESS_KEY_ID": "vidops" + secrets.token_hex(6), "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30)},
            secret=True,
        )
    return {**json.loads(keys.read_text()), "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}


def _adopt_stack_s3(layout: Layout) -> None:
    """Move S3 data and keys found in the stack's folder (.vidops/stack/seaweedfs and s3-keys.json) to the project's S3
    folder."""
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
        versioning.set_remote(
            layout.root,
            versioning.local_url(BUCKET),
            env["AWS_ENDPOINT_URL"],
            (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]),
        )


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


def _bucket(env: dict[str, str]) -> Callable[[str], bool]:
    """Ready when the bucket exists (SeaweedFS takes a few seconds before it accepts one)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )

    def ready(url: str) -> bool:
        try:
            if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
                client.create_bucket(Bucket=BUCKET)
            return True
        except (BotoCoreError, ClientError):
            return False

    return ready


def _seaweedfs(home: Path, s3_port: int, env: dict[str, str]) -> tuple[list[str], list[str], list[str]]:
    """The command lines of SeaweedFS's master, volume server, and filer with the S3 gateway, on loopback only, every
    port but S3's a free one. Three processes, not `weed server`, so that the master alone refuses every client but its
    own parts (`-whiteList=@`: they reach it over gRPC; `weed server` applies the list to the volume server too, which
    then refuses the gateway's uploads), and so anonymous requests cannot drop a bucket (`/col/delete`). The filer and
    volume server refuse any request without a JWT signed by keys only SeaweedFS holds, and every gRPC port (through
    which a client could otherwise write, delete or read anything) wants a TLS certificate signed by a CA only SeaweedFS
    holds (security.toml, read from the working folder; keys and certificates new at each start). The three share one
    data folder, as `weed server`'s parts do."""
    identity = {
        "name": "vidops",
        "credentials": [{"accessKey": env["AWS_ACCESS_KEY_ID"], "secretKey": env["AWS_SECRET_ACCESS_KEY"]}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    write_json(home / "s3.json", {"identities": [identity]}, secret=True)
    jwt = "".join(
        f'[jwt.{name}]\nkey = "{secrets.token_urlsafe(32)}"\nexpires_after_seconds = 60\n'
        for name in ("signing", "signing.read", "filer_signing", "filer_signing.read")
    )
    write_text(home / "security.toml", jwt + _grpc_tls(home / "tls"), secret=True)
    data = home / "data"
    data.mkdir(exist_ok=True)
    weed, loopback = program("weed"), ["-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
    # each gRPC port is its HTTP port + 10000, as SeaweedFS assumes where an address names one port only (the S3
    # gateway finds its filer so: with another gRPC port it waits for it forever)
    master, volume, filer = (_free_port(grpc_too=True) for _ in range(3))
    ports = lambda port: [f"-port={port}", f"-port.grpc={port + GRPC_OFFSET}"]
    return (
        [weed, "master", f"-mdir={data}", *loopback, *ports(master), "-whiteList=@", "-telemetry=false"],
        [weed, "volume", f"-dir={data}", *loopback, *ports(volume), f"-master=127.0.0.1:{master}", "-preStopSeconds=0"],
        [
            weed,
            "filer",
            f"-defaultStoreDir={data}",
            *loopback,
            *ports(filer),
            f"-master=127.0.0.1:{master}",
            "-s3",
            f"-s3.port={s3_port}",
            f"-s3.port.grpc={_free_port()}",
            f"-s3.config={home / 's3.json'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ],
    )


# security.toml's [grpc.<part>]: "client" is how a part calls another
GRPC_PARTS = ("master", "volume", "filer", "s3", "client")


def _grpc_tls(folder: Path) -> str:
    """security.toml's `[grpc]` sections: a new CA and, for each part of SeaweedFS, a certificate for 127.0.0.1 that it
    signs, so that SeaweedFS's gRPC ports take only mutually authenticated TLS from its own parts. Keys are mode 600 and
    the CA's key is never written: nothing can sign another certificate once this returns."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(mode=0o700, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ca_key = ec.generate_private_key(ec.SECP256R1())

    def certificate(cn: str, key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name("vidops seaweedfs ca"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            usage = x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            )
            builder = builder.add_extension(usage, critical=True)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
            ).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        return builder.sign(ca_key, hashes.SHA256())

    pem = lambda cert: cert.public_bytes(serialization.Encoding.PEM).decode()
    write_text(folder / "ca.crt", pem(certificate("vidops seaweedfs ca", ca_key, ca=True)))
    sections = [f'[grpc]\nca = "{folder / "ca.crt"}"\n']
    for part in GRPC_PARTS:
        key = ec.generate_private_key(ec.SECP256R1())
        write_text(folder / f"{part}.crt", pem(certificate(part, key, ca=False)))
        write_text(
            folder / f"{part}.key",
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
            secret=True,
        )
        sections.append(f'[grpc.{part}]\ncert = "{folder / f"{part}.crt"}"\nkey = "{folder / f"{part}.key"}"\n')
    return "".join(sections)


def _flag(argv: list[str], name: str) -> str:
    """The value of `-name=value` in a command line."""
    return next(arg.split("=", 1)[1] for arg in argv if arg.startswith(f"{name}="))

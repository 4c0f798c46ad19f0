"""The seal: a keyed hash over what vidops registered, so that only its own, unchanged versions are ever loaded.

A registered pyfunc runs its own code as it loads: a version planted in the registry, or changed since, must be refused
before any of it is loaded. The key is the project's (`registry_key`); machines that share a registry share it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
from pathlib import Path

from vidops.components.errors import VidopsError
from vidops.components.io import atomic_path, write_text
from vidops.components.layout import Layout
from vidops.components.tracking import Tracking, answering, fluent_at

ORIGIN = "vidops.origin"  # a version's tag: its seal (`seal_version`); only sealed, unchanged versions are loaded
# a version's tag from its creation until it is sealed and tagged: never loaded, gated or promoted
UNFINISHED = "vidops.unfinished"
REGISTRY_KEY = "VIDOPS_REGISTRY_KEY"  # hex: the registry key of machines that share a store (the cluster's secret)


def registry_key(layout: Layout) -> bytes:
    """The key that seals what vidops registers: VIDOPS_REGISTRY_KEY when set, else the project's own
    `.vidops/registry.key`, made once (mode 600). Without it, a version cannot pass for vidops's."""
    if os.environ.get(REGISTRY_KEY):
        return bytes.fromhex(os.environ[REGISTRY_KEY])
    path = layout.state / "registry.key"
    if not path.is_file():
        layout.state.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            write_text(tmp, secrets.token_hex(32), secret=True)
    return bytes.fromhex(path.read_text().strip())


def seal_version(tracking: Tracking, name: str, version: str, key: bytes) -> None:
    """Tag the version with a keyed hash (HMAC-SHA256 under the project's registry key) of its name, number and every
    file of its served model, as the store holds them: what `trusted_download` checks before anything of it is
    loaded."""
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        folder = download_version(tracking, name, version, Path(tmp))
        MlflowClient(tracking.uri).set_model_version_tag(name, version, ORIGIN, _seal(key, name, version, folder))


def trusted_download(tracking: Tracking, name: str, version: str, key: bytes, dst: Path) -> Path:
    """The version's served-model folder, downloaded into `dst`, once its seal proves vidops registered exactly these
    files; else an error, and nothing of it was loaded (a planted pyfunc runs its own code as it loads)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        with answering(tracking, f"reading models:/{name}/{version}"):
            tags = MlflowClient(tracking.uri).get_model_version(name, version).tags
    except MlflowException as exc:
        raise VidopsError(
            f"models:/{name}/{version}: not in the registry at {tracking.uri}: {exc.message.splitlines()[0]}"
        ) from None
    if UNFINISHED in tags:
        raise VidopsError(
            f"models:/{name}/{version}: its {tags[UNFINISHED]} (it is tagged {UNFINISHED}); "
            "refusing to load it, register the model again"
        )
    recorded = tags.get(ORIGIN)
    with answering(tracking, f"downloading models:/{name}/{version}"):
        folder = download_version(tracking, name, version, dst)
    if recorded is None or not hmac.compare_digest(recorded, _seal(key, name, version, folder)):
        why = f"it has no {ORIGIN} tag" if recorded is None else "its files are not the ones sealed at registration"
        raise VidopsError(
            f"models:/{name}/{version}: not a version this project's vidops registered ({why}); refusing to load it"
        )
    return folder


def download_version(tracking: Tracking, name: str, version: str, dst: Path) -> Path:
    """The version's served-model folder, downloaded into `dst`, unchecked (`trusted_download` checks its seal)."""
    import mlflow

    with fluent_at(tracking):  # models:/ resolves through the process's registry, not the tracking_uri argument
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}", dst_path=str(dst), tracking_uri=tracking.uri
            )
        )


def _seal(key: bytes, name: str, version: str, folder: Path) -> str:
    files = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with path.open("rb") as file:
            digest = hashlib.file_digest(file, "sha256").digest()
        files.update(path.relative_to(folder).as_posix().encode() + b"\0" + digest)
    return hmac.new(key, f"{name}\0{version}\0{files.hexdigest()}".encode(), "sha256").hexdigest()

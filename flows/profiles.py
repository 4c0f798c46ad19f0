"""Profiles: where Prefect and MLflow live (DESIGN.md, "Profiles").

The embedded profile needs nothing running: Prefect's ephemeral API and an MLflow sqlite
store, both under `<project>/.vidops/`. When MLFLOW_TRACKING_URI (and PREFECT_API_URL) are
set, vidops uses those services instead.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import re
import secrets
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vidops.components.errors import VidopsError
from vidops.components.io import atomic_path, write_text
from vidops.components.layout import Layout
from vidops.components.registry import Tracking

EPHEMERAL_STARTUP = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
VERBOSE = "VIDOPS_VERBOSE"  # set (to 1) by `vidops --verbose`: library chatter stays on, here and in child processes


def activate(layout: Layout) -> None:
    """Point this process's Prefect at the project's services; call before Prefect is imported."""
    state = layout.state
    try:
        (state / "prefect").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VidopsError(f"{layout.root}: cannot write the workdir: {exc.strerror}") from None
    if "PREFECT_API_URL" not in os.environ:
        # the ephemeral API keeps its database here, so `prefect server start` can show past runs
        os.environ["PREFECT_HOME"] = str(state / "prefect")
        if not {"PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING"} & set(os.environ):
            # the temporary API that Prefect starts for this command (on a free port) serves this process and its
            # children only: it refuses any request without this string, which lives in their environment alone
            os.environ["PREFECT_SERVER_API_AUTH_STRING"] = os.environ["PREFECT_API_AUTH_STRING"] = f"vidops:{secrets.token_urlsafe(24)}"
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect gives its temporary API 20 s (counting only its own sleeps) to answer; a busy machine needs longer
    os.environ.setdefault(EPHEMERAL_STARTUP, "180")
    if not os.environ.get(VERBOSE):  # the runs' INFO lines go to the Prefect UI (the API handler); the terminal shows warnings
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    quiet_libraries()


def quiet_libraries() -> None:
    """No telemetry; and unless VIDOPS_VERBOSE is set, no library chatter: TensorFlow's C++ lines and Python log lines
    below ERROR, MLflow's likewise and its artifact progress bars when stderr is not a terminal, warnings that libraries
    print. Processes started after this inherit it (the environment; a spawned process calls this itself)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    if os.environ.get(VERBOSE):
        return
    # read by TensorFlow as it loads; ERROR is filtered too, for cuInit's "error" on every machine without a GPU
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    if not sys.stderr.isatty():  # a bar redrawn in a log file is one line per redraw
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # for child processes; this one's filters are set here
    warnings.simplefilter("ignore")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # Prefect's console shows its warnings (tf.function retracing)
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` for the first import of it, wherever that is, and loads it with stderr sent to /dev/null.

    TensorFlow's native libraries log as they load (oneDNN, the CUDA stubs) through absl before any log
    level is read, so TF_CPP_MIN_LOG_LEVEL cannot stop those lines; only their file descriptor can.
    """

    found = False  # once: this finder stays in sys.meta_path (removing it could skip a finder in another thread's import)

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow" or self.found:
            return None
        self.found = True  # and the real finders find it
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _SilentLoader(spec.loader)
        return spec


class _SilentLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # the real one, for whoever asks later
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 2)
            self.loader.exec_module(module)
        finally:
            os.dup2(saved, 2)
            os.close(saved)


REGISTRY_KEY = "VIDOPS_REGISTRY_KEY"  # hex: the registry key of machines that share a store (the cluster's secret)


def registry_key(layout: Layout) -> bytes:
    """The key that seals what vidops registers (`registry.seal_version`): VIDOPS_REGISTRY_KEY when set, else the
    project's own `.vidops/registry.key`, made once (mode 600). Without it, a version cannot pass for vidops's."""
    if os.environ.get(REGISTRY_KEY):
        return bytes.fromhex(os.environ[REGISTRY_KEY])
    path = layout.state / "registry.key"
    if not path.is_file():
        layout.state.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            write_text(tmp, secrets.token_hex(32), secret=True)
    return bytes.fromhex(path.read_text().strip())


def tracking(layout: Layout) -> Tracking:
    """Where MLflow lives: the user's MLFLOW_TRACKING_URI when set, else the embedded store."""
    if "MLFLOW_TRACKING_URI" in os.environ:
        return Tracking(os.environ["MLFLOW_TRACKING_URI"])
    return embedded_tracking(layout)


def embedded_tracking(layout: Layout) -> Tracking:
    """The project's own MLflow store, which the stack's server serves too: one registry whichever profile is up."""
    state = layout.state
    return Tracking(f"sqlite:///{state / 'mlflow.db'}", artifact_root=(state / "mlartifacts").as_uri())


def results_storage(layout: Layout) -> Any:
    """Where Prefect keeps task results for the cache: VIDOPS_RESULTS (an s3:// URL in the stack profile, saved as
    the block `vidops-results`; the S3 endpoint and keys come from the environment), else `.vidops/results/`."""
    location = os.environ.get("VIDOPS_RESULTS")
    if not location or "://" not in location:
        return Path(location or layout.state / "results")
    from prefect.filesystems import RemoteFileSystem

    storage = RemoteFileSystem(basepath=location)
    storage.save("vidops-results", overwrite=True)  # Prefect keeps a task's result storage server-side
    return storage


@contextmanager
def registry_lock(layout: Layout, model_name: str, timeout_s: float = 1800) -> Iterator[None]:
    """Hold `model_name`'s lock while its aliases are read, decided on and moved, so two decisions never interleave.

    The lock lives where the store does: a file beside the embedded MLflow store, which only
    this machine can reach; a Prefect global concurrency limit of one slot when MLflow is a
    server, which processes on any machine of the stack or cluster share.
    """
    if tracking(layout).uri.startswith("sqlite:"):
        from filelock import FileLock, Timeout

        (layout.state / "locks").mkdir(parents=True, exist_ok=True)
        path = layout.state / "locks" / f"{model_name}.lock"
        try:
            with FileLock(path, timeout=timeout_s):
                yield
        except Timeout:
            raise VidopsError(f"{path}: another promotion of {model_name} held the lock for {timeout_s:.0f} s") from None
        return
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    name = "vidops-registry-" + re.sub(r"[^A-Za-z0-9_-]", "-", model_name)
    with get_client(sync_client=True) as client:
        try:
            client.upsert_global_concurrency_limit_by_name(name, 1)
        except ObjectAlreadyExists:  # made by a promotion that started at the same moment
            pass
    try:
        slot = concurrency(name, occupy=1, timeout_seconds=timeout_s, strict=True)
        slot.__enter__()
    except TimeoutError:
        raise VidopsError(f"Prefect concurrency limit {name}: another promotion of {model_name} held it for {timeout_s:.0f} s") from None
    try:
        yield
    finally:
        slot.__exit__(None, None, None)

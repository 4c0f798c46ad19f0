"""Profiles: where Prefect and MLflow live for a command (docs/ARCHITECTURE.md, "Profiles"), and what follows from it.

The embedded profile needs nothing running: Prefect's ephemeral API and an MLflow sqlite store, both under
`<project>/.vidops/`. When PREFECT_API_URL and MLFLOW_TRACKING_URI are set (the stack's env file, a cluster's
ConfigMap), vidops uses those services instead, and the registry's lock is a Prefect concurrency limit that every
machine of the stack shares.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from vidops.components import tracking
from vidops.components.errors import VidopsError
from vidops.components.layout import Layout
from vidops.components.promotion import file_lock
from vidops.components.quiet import VERBOSE, quiet_libraries

EPHEMERAL_STARTUP = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


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
            os.environ["PREFECT_SERVER_API_AUTH_STRING"] = os.environ["PREFECT_API_AUTH_STRING"] = (
                f"vidops:{secrets.token_urlsafe(24)}"
            )
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect gives its temporary API 20 s (counting only its own sleeps) to answer; a busy machine needs longer
    os.environ.setdefault(EPHEMERAL_STARTUP, "180")
    # the runs' INFO lines go to the Prefect UI (the API handler); the terminal shows warnings
    if not os.environ.get(VERBOSE):
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    quiet_libraries()


@contextmanager
def registry_lock(layout: Layout, model_name: str, timeout_s: float = 1800) -> Iterator[None]:
    """Hold `model_name`'s lock while its aliases are read, decided on and moved, so two decisions never interleave.

    The lock lives where the store does: a file beside the embedded MLflow store, which only
    this machine can reach; a Prefect global concurrency limit of one slot when MLflow is a
    server, which processes on any machine of the stack or cluster share.
    """
    if tracking.locate(layout).uri.startswith("sqlite:"):
        with file_lock(layout, model_name, timeout_s):
            yield
        return
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    name = "vidops-registry-" + re.sub(r"[^A-Za-z0-9_-]", "-", model_name)
    # ObjectAlreadyExists: made by a promotion that started at the same moment
    with get_client(sync_client=True) as client, suppress(ObjectAlreadyExists):
        client.upsert_global_concurrency_limit_by_name(name, 1)
    try:
        slot = concurrency(name, occupy=1, timeout_seconds=timeout_s, strict=True)
        slot.__enter__()
    except TimeoutError:
        raise VidopsError(
            f"Prefect concurrency limit {name}: another promotion of {model_name} held it for {timeout_s:.0f} s"
        ) from None
    try:
        yield
    finally:
        slot.__exit__(None, None, None)

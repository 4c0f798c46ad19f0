"""Profiles: where Prefect and MLflow live (DESIGN.md, "Profiles").

The embedded profile needs nothing running: Prefect's ephemeral API and an MLflow sqlite
store, both under `<project>/.vidops/`. When MLFLOW_TRACKING_URI (and PREFECT_API_URL) are
set, vidops uses those services instead.
"""

from __future__ import annotations

import os

from components.errors import VidopsError
from components.layout import Layout
from components.registry import Tracking


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
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    quiet_libraries()


def quiet_libraries() -> None:
    """No telemetry, and no TensorFlow start-up chatter."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def tracking(layout: Layout) -> Tracking:
    """Where MLflow lives: the user's MLFLOW_TRACKING_URI when set, else the embedded store."""
    state = layout.state
    if "MLFLOW_TRACKING_URI" in os.environ:
        return Tracking(os.environ["MLFLOW_TRACKING_URI"])
    return Tracking(f"sqlite:///{state / 'mlflow.db'}", artifact_root=(state / "mlartifacts").as_uri())

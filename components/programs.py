"""The command-line programs vidops runs (weed, mlflow, prefect): those of its own environment first. DVC's commands
run from `dvc_launcher`, in this environment's Python."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from vidops.components.errors import VidopsError


def program(name: str) -> str:
    """A program of this environment (the venv's bin), else from PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() else shutil.which(name)
    if found is None:
        raise VidopsError(
            f"{name}: not found next to {sys.executable} nor on PATH; install vidops into this environment"
        )
    return found

"""Where the stack and the project's S3 keep their state under `<project>/.vidops/`, and the record of what
`vidops stack up` started (`stack.json`: each process's pid and command line, so that `down` stops exactly that)."""

from __future__ import annotations

import json
from pathlib import Path

from vidops.components.layout import Layout

RECORD = "stack.json"


def folder(layout: Layout) -> Path:
    """The stack's servers: their data, logs, secrets, record and env file."""
    return layout.state / "stack"


def s3_folder(layout: Layout) -> Path:
    """The project's S3 server: its data, keys and log, the same for the stack and the embedded profile."""
    return layout.state / "s3"


def _record(home: Path) -> list[dict]:
    """What `up` started, in start order."""
    path = home / RECORD
    return json.loads(path.read_text())["services"] if path.is_file() else []

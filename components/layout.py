"""The one data layout that Prefect flows and DVC stages share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODEL_FILE = "model.keras"  # the trained model under models/<task>/


@dataclass(frozen=True)
class Layout:
    """Paths of a vidops project rooted at `root` (see docs/ARCHITECTURE.md)."""

    root: Path

    def raw(self, dataset: str) -> Path:
        return self.root / "data" / "raw" / dataset

    def catalog(self, task: str) -> Path:
        """The manifest and validation report of the dataset `task` learns from."""
        return self.root / "data" / "catalog" / task

    def features(self, task: str) -> Path:
        return self.root / "data" / "features" / task

    def models(self, task: str) -> Path:
        return self.root / "models" / task

    def reports(self, task: str) -> Path:
        return self.root / "reports" / task

    def data_docs(self, task: str) -> Path:
        """Great Expectations' Data Docs site of the task's dataset (open index.html)."""
        return self.reports(task) / "data_docs"

    @property
    def state(self) -> Path:
        """Where the embedded profile keeps its services' data (MLflow store, Prefect database)."""
        return self.root / ".vidops"

"""The one data layout that Prefect flows and DVC stages share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The file names of the layout (docs/ARCHITECTURE.md); components that take a folder use these too.
SHARDS = "clips"  # data/features/<task>/: one .npz per clip
INDEX_TABLE = "index.csv"  # data/features/<task>/: every clip: shard, split, status, error
# data/features/<task>/: labels and params; written last: its presence says the shards it lists are complete
INDEX = "index.json"
# path, caption: one row per caption, several per clip. At a captioned dataset's top (the user's), in
# data/catalog/<task>/ (the accepted clips'), in data/features/<task>/ (the extracted clips', each path as index.csv's)
CAPTIONS_FILE = "captions.csv"
# data/catalog/<task>/: every file of the dataset: its probe facts, checks, status, group and split
CATALOG = "catalog.csv"
# data/catalog/<task>/: the catalog table's former name (a dataset's own list is manifest.csv)
FORMER_CATALOG = "manifest.csv"
ACCEPTED = "accepted.csv"  # data/catalog/<task>/: the clips that passed, with their split: what extraction reads
QUARANTINE = "quarantine.csv"  # data/catalog/<task>/: one row per failed critical check per clip, with the reason
WARNINGS = "warnings.csv"  # data/catalog/<task>/: the same for warnings (the clip is kept)
REPORT = "validation.json"  # data/catalog/<task>/: the counts: accepted, warned, quarantined, by check
MODEL_FILE = "model.keras"  # models/<task>/: the trained model
LABELS_FILE = "labels.json"  # models/<task>/: its classes, in the order of its outputs
HISTORY_FILE = "history.json"  # models/<task>/: loss and metrics per epoch
RUN_FILE = "run.json"  # models/<task>/: the MLflow run the training reported to, live
METRICS = "metrics.json"  # reports/<task>/: the held-out evaluation
CONFUSION = "confusion.csv"  # reports/<task>/: actual, predicted: the format of `dvc plots`
CURVES = "training.csv"  # reports/<task>/: loss and accuracy per epoch, for `dvc plots`
REGISTRATION = "registration.json"  # reports/<task>/: the registered version
PROMOTION = "promotion"  # reports/<task>/: the last gate's decision and scores
DECISION = "promotion.json"  # reports/<task>/promotion/: the gate's decision, beside the scores it was made on


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

    def index(self, task: str) -> Path:
        """The features' index.csv: each clip's split, label and shard."""
        return self.features(task) / INDEX_TABLE

    def models(self, task: str) -> Path:
        return self.root / "models" / task

    def model(self, task: str) -> Path:
        return self.models(task) / MODEL_FILE

    def reports(self, task: str) -> Path:
        return self.root / "reports" / task

    def curves(self, task: str) -> Path:
        return self.reports(task) / CURVES

    def registration(self, task: str) -> Path:
        return self.reports(task) / REGISTRATION

    def promotion(self, task: str) -> Path:
        return self.reports(task) / PROMOTION

    def data_docs(self, task: str) -> Path:
        """Great Expectations' Data Docs site of the task's dataset (open index.html)."""
        return self.reports(task) / "data_docs"

    @property
    def state(self) -> Path:
        """Where the embedded profile keeps its services' data (MLflow store, Prefect database)."""
        return self.root / ".vidops"

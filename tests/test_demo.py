"""`vidops demo` as the README runs it: the default (embedded) profile and the demo-sized datasets."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


def test_demo_leaves_two_champions_well_above_chance_and_runs_again(tmp_path: Path):
    env_free = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    demo = [sys.executable, "-m", "flows.cli", "demo", "--workdir", str(tmp_path)]
    first = subprocess.run(demo, capture_output=True, text=True, env=env_free, timeout=1800)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("now champion") == 2, first.stdout

    reports = tmp_path / "reports"
    classification = json.loads((reports / "classification" / "metrics.json").read_text())
    assert classification["accuracy"] >= 3 * classification["chance"], classification  # 7 classes: chance is 0.14
    sync = json.loads((reports / "sync" / "metrics.json").read_text())
    assert sync["accuracy_within_1"] >= 3 * sync["chance_within_1"], sync  # 31 offsets: chance within +-1 is 0.10

    client = MlflowClient(f"sqlite:///{tmp_path / '.vidops' / 'mlflow.db'}")
    for name, metric, value, dataset in (("vidops-classifier", "accuracy", classification["accuracy"], "demo"),
                                         ("vidops-sync", "accuracy_within_1", sync["accuracy_within_1"], "demo-sync")):  # fmt: skip
        champion = client.get_model_version_by_alias(name, "champion")
        assert client.get_run(champion.run_id).data.metrics[metric] == value
        # the dataset was versioned with DVC and pushed before training, and the champion names that version
        version = yaml.safe_load((tmp_path / "data" / "raw" / f"{dataset}.dvc").read_text())["outs"][0]["md5"]
        assert f"versioned data/raw/{dataset} as {version}" in first.stdout
        assert champion.tags["vidops.dataset_version"] == version

    again = [*demo, "--set", "train.classification.epochs=1", "--set", "tasks=[classification]"]
    second = subprocess.run(again, capture_output=True, text=True, env=env_free, timeout=1200)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "using the demo classification dataset already in" in second.stdout
    assert "registered model: vidops-classifier version 2" in second.stdout

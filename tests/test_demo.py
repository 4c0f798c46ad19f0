"""`vidops demo` as the README runs it: the default (embedded) profile and the demo-sized dataset."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


def test_demo_leaves_a_champion_well_above_chance_and_runs_again(tmp_path: Path):
    env_free = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    demo = [sys.executable, "-m", "flows.cli", "demo", "--workdir", str(tmp_path)]
    first = subprocess.run(demo, capture_output=True, text=True, env=env_free, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "now champion" in first.stdout

    metrics = json.loads((tmp_path / "reports" / "classification" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 3 * metrics["chance"], metrics  # 7 classes: chance is 0.14

    client = MlflowClient(f"sqlite:///{tmp_path / '.vidops' / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("vidops-classifier", "champion")
    assert client.get_run(champion.run_id).data.metrics["accuracy"] == metrics["accuracy"]

    second = subprocess.run([*demo, "--set", "train.classifier.epochs=1"], capture_output=True, text=True, env=env_free, timeout=1200)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "using the demo dataset already in" in second.stdout
    assert "registered model: vidops-classifier version 2" in second.stdout

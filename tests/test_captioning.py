"""The captioner through every stage on a few generated clips: validate, extract, train, evaluate (with both
baselines), register, the gate, and the served model answering a posted video with its caption and the beam's others."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from vidops.components.evaluation import METRICS, SAMPLES_TABLE
from vidops.components.generate import generate_dataset
from vidops.components.layout import LABELS_FILE, Layout
from vidops.components.media import write_clip
from vidops.components.params import load_params
from vidops.components.registry import CHAMPION
from vidops.components.serving import encode
from vidops.components.text import SPECIALS

NAME = "captioning"
SMALL = [
    f"tasks=[{NAME}]",
    f"generate.{NAME}.clips_per_class=6", f"generate.{NAME}.size=32", f"generate.{NAME}.duration_s=0.6",
    f"extract.{NAME}.frames=4", f"extract.{NAME}.size=32", f"extract.{NAME}.workers=1",
    f"train.{NAME}.epochs=2", f"train.{NAME}.filters=[8]", f"train.{NAME}.units=16", f"train.{NAME}.embedding=8",
    f"train.{NAME}.max_length=5",  # shorter than most demo captions: cut, and counted
    f"registry.{NAME}.floor=0.0",  # two epochs say little; the gate is tested elsewhere
]  # fmt: skip


def test_the_captioner_is_trained_scored_against_its_baselines_registered_gated_and_served(tmp_path, monkeypatch):
    from vidops.flows import stages
    from vidops.flows.profiles import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    layout = Layout(tmp_path)
    params = load_params(None, SMALL)
    generate_dataset(layout.raw(params.datasets.of(NAME)), NAME, params.generate.of(NAME))

    assert stages.validate_dataset(layout, params, NAME).accepted == 42
    stages.extract_features(layout, params, NAME)
    trained = stages.train_model(layout, params, NAME)
    vocabulary = json.loads(layout.model(NAME).with_name(LABELS_FILE).read_text())
    assert vocabulary == list(trained.labels)
    assert vocabulary[: len(SPECIALS)] == list(SPECIALS) and {"red", "moves"} <= set(vocabulary)

    scores = stages.evaluate_model(layout, params, NAME)
    metrics = json.loads((layout.reports(NAME) / METRICS).read_text())
    assert metrics == pytest.approx(scores.metrics, nan_ok=True)
    for name in ("bleu4", "cider_d", "attribute_accuracy"):
        for suffix in ("", "_most_frequent", "_nearest_neighbour"):
            assert metrics[f"{name}{suffix}"] is not None and metrics[f"{name}{suffix}"] >= 0, f"{name}{suffix}"
    assert metrics["captions_over_max_length"] > 0 and metrics["unseen_combination_clips"] > 0
    assert 0 <= metrics["attribute_accuracy_unseen_combinations"] <= 1
    samples = (layout.reports(NAME) / SAMPLES_TABLE).read_text()
    assert samples.startswith("| clip | references | said |") and (layout.reports(NAME) / "samples.png").stat().st_size > 0

    registered = stages.register_model(layout, params, NAME)
    decision = stages.promote_model(layout, params, NAME)
    assert decision.champion and decision.score == pytest.approx(metrics["attribute_accuracy"])
    client = MlflowClient(tracking(layout).uri)
    run = client.get_run(registered.run_id)
    assert run.data.metrics["bleu4_nearest_neighbour"] == pytest.approx(metrics["bleu4_nearest_neighbour"])
    artifacts = {a.path for a in client.list_artifacts(registered.run_id, "evaluation")}
    assert {"evaluation/samples.md", "evaluation/samples.png"} <= artifacts

    mlflow.set_tracking_uri(tracking(layout).uri)
    served = mlflow.pyfunc.load_model(f"models:/vidops-captioner@{CHAMPION}")
    clip = next(layout.raw(params.datasets.of(NAME)).glob("move_left/*.mp4"))
    answer = served.predict(pd.DataFrame({"video": [encode(clip)]})).iloc[0]
    assert isinstance(answer["caption"], str) and answer["caption"]
    assert set(answer["caption"].split()) <= set(vocabulary) - set(SPECIALS) | {"<unk>"}
    assert len(answer["alternatives"]) == params.train.of(NAME).beam_size - 1
    assert all(alternative["score"] <= answer["score"] for alternative in answer["alternatives"])

    short = tmp_path / "short.mp4"  # 2 frames: the captioner reads 4
    write_clip(short, iter([np.full((32, 32, 3), 128, np.uint8)] * 2), 25, None)
    with pytest.raises(MlflowException, match="cannot extract frames"):
        served.predict(pd.DataFrame({"video": [encode(short)]}))

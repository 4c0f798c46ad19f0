"""The captioner through every stage on a few generated clips: validate, extract, train, evaluate (with both
baselines), register, the gate, and the served model answering a posted video with its caption and the beam's others;
and on a caption dataset in other words than the demo's, which it learns, beats its baseline on, and is gated on."""

from __future__ import annotations

import json
from collections import Counter

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from vidops.components import inputs, stages, text, tracking
from vidops.components.generate import generate_dataset
from vidops.components.layout import CAPTIONS_FILE, LABELS_FILE, METRICS, Layout
from vidops.components.media import write_clip
from vidops.components.params import load_params
from vidops.components.registry import CHAMPION, EVALUATED
from vidops.components.serving import encode
from vidops.components.tasks.captioning.evaluation import SAMPLES_TABLE
from vidops.components.tasks.captioning.generate import VOCABULARY, captioned_plan
from vidops.components.text import SPECIALS, words

NAME = "captioning"
SMALL = [
    f"tasks=[{NAME}]",
    f"generate.{NAME}.clips_per_class=6",
    f"generate.{NAME}.size=32",
    f"generate.{NAME}.duration_s=0.6",
    f"extract.{NAME}.frames=4",
    f"extract.{NAME}.size=32",
    f"extract.{NAME}.workers=1",
    f"train.{NAME}.epochs=2",
    f"train.{NAME}.filters=[8]",
    f"train.{NAME}.units=16",
    f"train.{NAME}.embedding=8",
    f"train.{NAME}.max_length=5",  # shorter than most demo captions: cut, and counted
    f"registry.{NAME}.floor=0.0",  # two epochs say little; the gate is tested elsewhere
]


def test_the_captioner_is_trained_scored_against_its_baselines_registered_gated_and_served(
    tmp_path, monkeypatch, mlflow_at
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    layout = Layout(tmp_path)
    params = load_params(None, SMALL)
    generate_dataset(layout.raw(params.datasets.of(NAME)), NAME, params.generate.of(NAME))

    assert stages.validate(layout, params, NAME).accepted == 42
    stages.extract(layout, params, NAME)
    trained = stages.train(layout, params, NAME)
    vocabulary = json.loads(layout.model(NAME).with_name(LABELS_FILE).read_text())
    assert vocabulary == list(trained.labels)
    assert vocabulary[: len(SPECIALS)] == list(SPECIALS) and {"red", "moves"} <= set(vocabulary)

    scores = stages.evaluate(layout, params, NAME)
    metrics = json.loads((layout.reports(NAME) / METRICS).read_text())
    assert metrics == pytest.approx(scores.metrics, nan_ok=True)
    assert metrics["captions_over_max_length"] > 0 and metrics["unseen_combination_clips"] > 0
    for name in (
        "attribute_accuracy",
        "attribute_accuracy_unseen_combinations",
    ):  # the demo's words: its attributes scored
        assert all(0 <= metrics[f"{name}{suffix}"] <= 1 for suffix in ("", "_most_frequent", "_nearest_neighbour")), (
            name
        )
    # the most frequent baseline is the most frequent training caption, scored against each test clip's references
    captions = inputs.read_captions(layout.features(NAME))
    test, train = (inputs.open_split(layout.features(NAME), split, ("frames",)) for split in ("test", "train"))
    references = [[" ".join(words(c)) for c in captions[clip]] for clip in test.clips]
    most_frequent = Counter(" ".join(words(c)) for clip in train.clips for c in captions[clip]).most_common(1)[0][0]
    assert metrics["bleu4_most_frequent"] == pytest.approx(text.bleu4([most_frequent] * len(test.clips), references))
    assert metrics["cider_d_most_frequent"] == pytest.approx(
        text.cider_d([most_frequent] * len(test.clips), references)
    )
    samples = (layout.reports(NAME) / SAMPLES_TABLE).read_text()
    assert (
        samples.startswith("| clip | references | said |") and (layout.reports(NAME) / "samples.png").stat().st_size > 0
    )

    registered = stages.register(layout, params, NAME)
    decision = stages.promote(layout, params, NAME)
    assert decision.champion and decision.metric == "cider_d" and decision.score == pytest.approx(metrics["cider_d"])
    client = MlflowClient(tracking.locate(layout).uri)
    run = client.get_run(registered.run_id)
    assert run.data.metrics["bleu4_nearest_neighbour"] == pytest.approx(metrics["bleu4_nearest_neighbour"])
    artifacts = {a.path for a in client.list_artifacts(registered.run_id, "evaluation")}
    assert {"evaluation/samples.md", "evaluation/samples.png"} <= artifacts

    mlflow_at(tracking.locate(layout))
    served = mlflow.pyfunc.load_model(f"models:/vidops-captioner@{CHAMPION}")
    dataset = layout.raw(params.datasets.of(NAME))
    answers = [served.predict(pd.DataFrame({"video": [encode(dataset / clip)]})).iloc[0] for clip in test.clips]
    # the evaluation's BLEU-4 and CIDEr-D are those of the captions the served model says for the test clips
    said = [answer["caption"] for answer in answers]
    assert metrics["bleu4"] == pytest.approx(text.bleu4(said, references)) and metrics["cider_d"] == pytest.approx(
        text.cider_d(said, references)
    )
    answer = answers[0]
    assert isinstance(answer["caption"], str) and answer["caption"]
    assert set(answer["caption"].split()) <= set(vocabulary) - set(SPECIALS) | {"<unk>"}
    assert len(answer["alternatives"]) == params.train.of(NAME).beam_size - 1
    assert all(alternative["score"] <= answer["score"] for alternative in answer["alternatives"])

    short = tmp_path / "short.mp4"  # 2 frames: the captioner reads 4
    write_clip(short, iter([np.full((32, 32, 3), 128, np.uint8)] * 2), 25, None)
    with pytest.raises(MlflowException, match="cannot extract frames"):
        served.predict(pd.DataFrame({"video": [encode(short)]}))


FRENCH = {"red": "rouge", "green": "verte", "blue": "bleue", "yellow": "jaune", "white": "blanche"}
IN_FRENCH = ("la forme qui bouge est {}", "on voit une forme {} ici")
LEARNS = [  # enough for the colour, which the frames alone tell, in about half a minute
    f"train.{NAME}.epochs=60",
    f"train.{NAME}.batch_size=8",
    f"train.{NAME}.learning_rate=0.005",
    f"train.{NAME}.units=32",
    f"train.{NAME}.embedding=16",
    f"train.{NAME}.filters=[16]",
    f"train.{NAME}.max_length=16",
]


@pytest.mark.slow
def test_a_caption_dataset_in_other_words_is_learnt_beats_its_baseline_and_is_gated_on_a_metric_it_has(
    tmp_path, monkeypatch
):
    """A user's captions that use none of the demo's words: the captioner learns the colour they name from the frames
    (CIDEr-D above the most frequent caption's), no attribute accuracy is claimed, and the gate scores CIDEr-D."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    layout = Layout(tmp_path)
    params = load_params(None, [*SMALL, *LEARNS])
    dataset = layout.raw(params.datasets.of(NAME))
    generate_dataset(dataset, NAME, params.generate.of(NAME))
    rows = [
        {"path": c.path, "caption": t.format(FRENCH[c.colour])}
        for c in captioned_plan(params.generate.of(NAME))
        for t in IN_FRENCH
    ]
    pd.DataFrame(rows).to_csv(dataset / CAPTIONS_FILE, index=False)
    assert not {w for row in rows for w in words(row["caption"])} & set(VOCABULARY)

    for stage in ("validate", "extract", "train"):
        stages.STAGES[stage](layout, params, NAME)
    metrics = stages.evaluate(layout, params, NAME).metrics
    assert not [name for name in metrics if name.startswith(("attribute_accuracy", "unseen"))], metrics
    assert metrics["cider_d"] > metrics["cider_d_most_frequent"], metrics
    assert (
        not (layout.reports(NAME) / "confusion.png").exists()
        and pd.read_csv(layout.reports(NAME) / "confusion.csv").empty
    )

    registered = stages.register(layout, params, NAME)
    decision = stages.promote(layout, params, NAME)
    assert decision.champion and decision.metric == "cider_d" and decision.score == pytest.approx(metrics["cider_d"])
    tags = MlflowClient(tracking.locate(layout).uri).get_model_version(registered.model_name, registered.version).tags
    assert tags[EVALUATED] == f"cider_d={metrics['cider_d']}"

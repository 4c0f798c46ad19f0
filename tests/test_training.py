import json

import keras
import numpy as np
import pandas as pd
import pytest

from components.errors import VidopsError
from components.evaluation import evaluate_classifier
from components.params import ClassifierParams
from components.training import build_classifier
from flows import stages


@pytest.mark.parametrize("temporal", ["conv", "lstm"])
def test_the_classifier_sees_the_order_of_frames(temporal: str):
    """Reversed frames (moving left instead of right) must be able to give another answer."""
    keras.utils.set_random_seed(0)
    model = build_classifier(6, 32, 7, ClassifierParams(temporal=temporal, filters=(4, 8)))
    clip = np.random.default_rng(0).integers(0, 255, (1, 6, 32, 32, 3), dtype=np.uint8)
    forward = model.predict(clip, verbose=0)
    backward = model.predict(clip[:, ::-1], verbose=0)
    assert forward.shape == (1, 7)
    assert np.allclose(forward.sum(), 1, atol=1e-5)
    assert not np.allclose(forward, backward, atol=1e-6)


def test_train_then_evaluate_writes_model_metrics_and_confusion(project, tiny_params):
    for stage in (stages.validate_dataset, stages.extract_features):
        stage(project, tiny_params)
    trained = stages.train_classifier(project, tiny_params)
    assert trained.path.is_file()
    assert len(trained.history["loss"]) == tiny_params.train.classifier.epochs
    assert json.loads((trained.path.parent / "labels.json").read_text()) == list(trained.labels)

    scores = stages.evaluate_classifier(project, tiny_params)
    metrics = json.loads(scores.metrics_path.read_text())
    assert 0 <= metrics["accuracy"] <= 1 and metrics["test_clips"] == 7
    assert metrics["chance"] == pytest.approx(1 / 7)
    confusion = pd.read_csv(scores.confusion_path)
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == 7
    assert (confusion["actual"] == confusion["predicted"]).mean() == pytest.approx(metrics["accuracy"])


def test_evaluate_without_a_model_is_an_error(tmp_path):
    with pytest.raises(VidopsError, match="no trained model"):
        evaluate_classifier(tmp_path / "models", tmp_path / "features", tmp_path / "reports")

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


@pytest.mark.parametrize("temporal", ["conv", "lstm", "2plus1d"])
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


def test_a_killed_training_resumes_from_its_last_checkpoint(project, tiny_params):
    from components.training import CHECKPOINTS, train_classifier

    for stage in (stages.validate_dataset, stages.extract_features):
        stage(project, tiny_params)
    features, models = project.features("classification"), project.models("classification")
    three = tiny_params.train.classifier.model_copy(update={"epochs": 3, "patience": 10})
    finished = train_classifier(features, models, three)
    assert finished.resumed_from == 0 and finished.epochs == 3
    assert not (models / CHECKPOINTS).exists()  # a finished training leaves no checkpoint behind

    class Killed(Exception):
        pass

    class KillAfterTwo(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise Killed

    # killed after epoch 2 of 3: what the checkpoint holds is what the model had then
    original_fit = keras.Model.fit
    keras.Model.fit = lambda self, *a, **k: original_fit(self, *a, **{**k, "callbacks": [*k["callbacks"], KillAfterTwo()]})
    try:
        with pytest.raises(Killed):
            train_classifier(features, models, three)
    finally:
        keras.Model.fit = original_fit
    state = json.loads((models / CHECKPOINTS / "state.json").read_text())
    assert state["epoch"] == 2 and len(state["history"]["loss"]) == 2
    saved = keras.models.load_model(models / CHECKPOINTS / "model.keras")

    resumed = train_classifier(features, models, three)
    assert resumed.resumed_from == 2 and resumed.epochs == 3
    assert resumed.history["loss"][:2] == state["history"]["loss"]
    assert int(saved.optimizer.iterations) == 2 * 4  # 14 clips in batches of 4, per epoch


def test_a_class_without_training_clips_fails_before_any_epoch(tmp_path, project, tiny_params):
    from components.training import train_classifier

    for stage in (stages.validate_dataset, stages.extract_features):
        stage(project, tiny_params)
    index_csv = project.features("classification") / "index.csv"
    index = pd.read_csv(index_csv, keep_default_na=False)
    index.loc[(index["label"] == "rotate") & (index["split"] == "train"), "status"] = "error"
    index.to_csv(index_csv, index=False)
    with pytest.raises(VidopsError, match="no training clips for class\\(es\\) rotate"):
        train_classifier(project.features("classification"), tmp_path / "model", tiny_params.train.classifier)
    assert not (tmp_path / "model").exists()

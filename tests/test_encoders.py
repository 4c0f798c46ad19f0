"""The swappable frame encoder: both models train with a Keras application, weights load and stay frozen, bad input
is named.

No network: the application encoders are built without weights, or with a weights file the test writes.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from vidops.components import encoders, tasks, training
from vidops.components.errors import VidopsError
from vidops.components.layers import PerFrame, load_model
from vidops.components.layout import INDEX_TABLE, Layout
from vidops.components.params import load_params
from vidops.components.tasks.classification.model import build_classifier
from vidops.components.tasks.classification.params import ClassifierParams
from vidops.components.tasks.sync.model import build_sync
from vidops.components.tasks.sync.params import SyncParams

APP = "mobilenet_v3_small"  # cheap at 32 px


def _encoder(model: keras.Model) -> keras.Model:
    return next(layer for layer in model.layers if isinstance(layer, PerFrame)).layer


def _weights_file(folder: Path, encoder: str = APP) -> Path:
    """An encoder's weights as a user would bring them: saved from a model of that application."""
    keras.utils.set_random_seed(7)
    path = folder / f"{encoder}.weights.h5"
    encoders.application(encoder, None, encoders.NO_WEIGHTS).save_weights(path)
    return path


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_an_application_encoder_model_saves_and_loads_without_its_weights_file(tmp_path):
    """The served model is the saved one: it holds the encoder whole."""
    model = build_classifier(4, 48, 7, ClassifierParams(encoder=APP, filters=(4,)))
    clips = np.random.default_rng(0).integers(0, 255, (2, 4, 48, 48, 3), dtype=np.uint8)
    assert model.predict(clips, verbose=0).shape == (2, 7)
    model.save(tmp_path / "model.keras")
    assert _same(load_model(tmp_path / "model.keras").get_weights(), model.get_weights())


def test_an_encoder_trained_from_scratch_gets_the_small_encoders_batch_norm_momentum():
    """MobileNetV3's 0.999 would leave its inference statistics at their start after the demo's few thousand steps."""
    scratch = _encoder(build_classifier(4, 32, 7, ClassifierParams(encoder=APP, filters=(4,))))
    momenta = {layer.momentum for layer in scratch.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {encoders.SCRATCH_MOMENTUM}


def test_a_weights_file_is_loaded_into_the_encoder(tmp_path):
    path = _weights_file(tmp_path)
    expected = encoders.application(APP, None, str(path)).get_weights()
    assert _same(
        _encoder(build_sync(32, 40, SyncParams(encoder=APP, encoder_weights=str(path), units=8))).get_weights(),
        expected,
    )
    assert not _same(_encoder(build_sync(32, 40, SyncParams(encoder=APP, units=8))).get_weights(), expected)


def test_new_content_in_the_same_weights_file_is_a_new_training_for_both_caches(project, tmp_path):
    """The stage's cache (Prefect) and the checkpoint's resume key see the file's content, not only its path."""
    from vidops.components import stages

    path = _weights_file(tmp_path)
    params = load_params(None, [f"train.classification.encoder={APP}", f"train.classification.encoder_weights={path}"])
    features = project.features("classification")
    features.mkdir(parents=True)
    (features / INDEX_TABLE).write_text("path,label,split,shard,status\n")
    before = (
        stages.fingerprint("train", project, params, "classification"),
        training._run_key(features, params.train.classification),
    )
    keras.utils.set_random_seed(8)
    encoders.application(APP, None, encoders.NO_WEIGHTS).save_weights(path)  # other weights, the same path
    after = (
        stages.fingerprint("train", project, params, "classification"),
        training._run_key(features, params.train.classification),
    )
    assert before[0] != after[0] and before[1] != after[1]


# Each training below takes 30 s and more on 2 cores: tracing the application's training step is most of it.
FAST = {"filters": (4,), "epochs": 1, "batch_size": 4, "validation_fraction": 0.0}


@pytest.mark.slow
def test_the_classifier_trains_with_an_application_encoder_that_learns(trained_project, tmp_path):
    path = _weights_file(tmp_path)
    params = ClassifierParams(encoder=APP, encoder_weights=str(path), **FAST)
    trained = tasks.spec("classification").train(trained_project.features("classification"), tmp_path / "model", params)
    assert trained.epochs == 1 and np.isfinite(trained.history["loss"]).all()
    learnt = _encoder(load_model(trained.path)).get_weights()
    assert not _same(learnt, encoders.application(APP, None, str(path)).get_weights())


@pytest.mark.slow
def test_a_frozen_encoder_keeps_its_weights_through_training(trained_project, tmp_path):
    """Every weight of the frozen encoder, batch norm's moving statistics too, is the file's after an epoch."""
    path = _weights_file(tmp_path)
    params = ClassifierParams(encoder=APP, encoder_weights=str(path), freeze_encoder=True, **FAST)
    trained = tasks.spec("classification").train(trained_project.features("classification"), tmp_path / "model", params)
    assert _same(
        _encoder(load_model(trained.path)).get_weights(), encoders.application(APP, None, str(path)).get_weights()
    )


@pytest.mark.slow
def test_the_sync_model_trains_with_an_application_encoder(project, tmp_path):
    from vidops.components import stages

    overrides = [
        "tasks=[sync]",
        "extract.sync.size=32",
        f"train.sync.encoder={APP}",
        "train.sync.epochs=1",
        "train.sync.validation_fraction=0.0",
    ]
    params = load_params(project.root / "params.yaml", overrides)
    stages.validate(project, params, "sync")
    stages.extract(project, params, "sync")
    trained = tasks.spec("sync").train(project.features("sync"), tmp_path, params.train.sync)
    assert trained.epochs == 1 and np.isfinite(trained.history["loss"]).all()
    assert isinstance(_encoder(load_model(trained.path)), keras.Model)


def test_the_final_layers_stay_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_classifier(4, 32, 7, ClassifierParams(encoder=APP, filters=(4,)))
        out = model.predict(np.full((1, 4, 32, 32, 3), 128, np.uint8), verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert _encoder(model).compute_dtype == "float16"
    assert out.dtype == np.float32 and np.isclose(out.sum(), 1, atol=1e-3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["train.classification.encoder=resnet9"],
            (
                r"train\.classification\.encoder: no encoder 'resnet9'; "
                r"known encoders: small, mobilenet_v3_small, efficientnet_b0"
            ),
        ),
        (
            [f"train.sync.encoder={APP}", "extract.sync.size=24"],
            rf"train\.sync\.encoder: {APP} needs frames of at least 32 px, but they are 24 px",
        ),
        (
            ["train.classification.encoder_weights=imagenet"],
            r"train\.classification\.encoder_weights: the small encoder learns from scratch",
        ),
        (
            [f"train.classification.encoder={APP}", "train.classification.encoder_weights=weights.npz"],
            r"train\.classification\.encoder_weights: expected none, imagenet or the path of a \.weights\.h5 file",
        ),
        (
            [f"train.classification.encoder={APP}", "train.classification.freeze_encoder=true"],
            r"train\.classification\.freeze_encoder: freezing an encoder without weights",
        ),
        (
            [f"train.classification.encoder={APP}", "train.classification.temporal=2plus1d"],
            r"train\.classification\.temporal: 2plus1d builds its own",
        ),
    ],
)
def test_encoder_params_that_cannot_work_are_named_on_load(overrides: list[str], message: str):
    with pytest.raises(VidopsError, match=message):
        load_params(None, overrides)


def test_imagenet_weights_that_keras_has_not_cached_are_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # an empty cache: this machine never downloaded them
    params = load_params(
        None, [f"train.classification.encoder={APP}", "train.classification.encoder_weights=imagenet"]
    ).train.classification
    with pytest.raises(
        VidopsError,
        match=(
            r"train\.classification\.encoder_weights: "
            r"imagenet weights for mobilenet_v3_small are not in Keras's cache"
        ),
    ) as caught:
        tasks.spec("classification").preflight("classification", params)
    assert "pass a local .weights.h5 file" in str(caught.value)
    assert str(tmp_path / "models" / encoders.APPLICATIONS[APP].imagenet_file) in str(caught.value)


def test_a_missing_weights_file_is_named(tmp_path):
    params = ClassifierParams(encoder=APP, encoder_weights=str(tmp_path / "nope.weights.h5"))
    with pytest.raises(
        VidopsError, match=r"train\.classification\.encoder_weights: no weights file .*nope\.weights\.h5"
    ):
        tasks.spec("classification").preflight("classification", params)


def test_a_weights_file_of_another_encoder_fails_before_any_epoch_naming_the_file(trained_project, tmp_path):
    other = _weights_file(tmp_path, "efficientnet_b0")
    junk = tmp_path / "junk.weights.h5"
    junk.write_text("not HDF5")
    for path in (other, junk):
        params = ClassifierParams(encoder=APP, encoder_weights=str(path), **FAST)
        with pytest.raises(VidopsError, match=rf"train\.classification\.encoder_weights: {path} does not fit {APP}: "):
            tasks.spec("classification").train(trained_project.features("classification"), tmp_path / "model", params)
    assert not (tmp_path / "model").exists()


def test_a_frame_too_small_for_the_encoder_is_an_error_when_building():
    with pytest.raises(VidopsError, match=f"{APP} needs frames of at least 32 px, got 16 px"):
        build_sync(16, 40, SyncParams(encoder=APP))


@pytest.mark.slow
def test_missing_weights_fail_the_flow_before_any_work(prefect_api, project: Layout):
    from vidops.flows.pipeline import training_pipeline

    missing = project.root / "encoder.weights.h5"
    overrides = [f"train.classification.encoder={APP}", f"train.classification.encoder_weights={missing}"]
    with pytest.raises(Exception, match=f"train.classification.encoder_weights: no weights file {missing}"):
        training_pipeline(root=str(project.root), overrides=overrides)
    assert not (project.root / "data" / "catalog").exists()

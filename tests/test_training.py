"""Both models: they see what they must, they train and resume, and bad inputs stop them before the first epoch."""

import json
import re
import shutil
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

import faults
from conftest import TINY
from vidops.components import inputs
from vidops.components.errors import VidopsError
from vidops.components.params import load_params
from vidops.components.tasks.classification import evaluation as classifier_evaluation
from vidops.components.tasks.classification import inputs as classifier_inputs
from vidops.components.tasks.classification.evaluation import evaluate_classifier
from vidops.components.tasks.classification.model import build_classifier
from vidops.components.tasks.classification.params import ClassifierParams
from vidops.components.tasks.classification.train import train_classifier
from vidops.components.tasks.sync import inputs as sync_inputs
from vidops.components.tasks.sync.model import OffsetPairs, build_sync
from vidops.components.tasks.sync.params import SyncParams
from vidops.components.tasks.sync.train import train_sync
from vidops.components.training import CHECKPOINTS


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


@pytest.mark.parametrize("k", [-3, -1, 0, 2, 3])
def test_the_candidate_of_the_true_offset_pairs_each_frame_with_its_own_sound(k: int):
    """Frames and sound carry their frame number: the window's pairs at candidate k + K match exactly."""
    params, n, start = SyncParams(window=4, max_offset=3), 20, 6
    window, max_offset = params.window, params.max_offset
    frames = np.arange(n, dtype=np.float32)
    audio = np.repeat(frames[:, None, None], 4, axis=1)  # [n, 4 steps, 1 feature]: every step says its frame
    video, context = sync_inputs.sync_window(frames, audio, start, k, params)
    pairs = OffsetPairs(max_offset)([np.asarray(video)[None, :, None], np.asarray(context)[None, :, 0, :]])
    pairs = np.asarray(pairs).reshape(2 * max_offset + 1, window, 2)
    matching = [c for c in range(2 * max_offset + 1) if np.array_equal(pairs[c, :, 0], pairs[c, :, 1])]
    assert matching == [k + max_offset]

    examples, offsets = sync_inputs.sync_examples(frames[:, None], audio, params)  # evaluation's windows agree
    for video, context in zip(examples["frames"][offsets == k], examples["audio"][offsets == k], strict=True):
        assert np.array_equal(context[max_offset : max_offset + window, 0, 0] - k, video[:, 0])


def test_the_sync_model_takes_any_window_length_and_gives_offsets_and_in_sync():
    params = SyncParams(window=4, max_offset=3, filters=(4,), units=8)
    model = build_sync(16, 40, params)
    for window in (4, 7):
        out = model.predict(
            {
                "frames": np.zeros((2, window, 16, 16, 3), np.uint8),
                "audio": np.zeros((2, window + 6, 4, 40), np.float32),
            },
            verbose=0,
        )
        assert out["offset"].shape == (2, 7) and np.allclose(out["offset"].sum(axis=1), 1, atol=1e-5)
        assert out["in_sync"].shape == (2, 1)


def test_both_models_train_evaluate_and_write_their_outputs(trained_project, tiny_params):
    for task in ("classification", "sync"):
        models, reports = trained_project.models(task), trained_project.reports(task)
        assert (models / "model.keras").is_file() and not (models / CHECKPOINTS).exists()
        history = json.loads((models / "history.json").read_text())
        assert len(history["loss"]) == tiny_params.train.of(task).epochs
        metrics = json.loads((reports / "metrics.json").read_text())
        confusion = pd.read_csv(reports / "confusion.csv")
        assert list(confusion.columns) == ["actual", "predicted"]
        assert (confusion["actual"] == confusion["predicted"]).mean() == pytest.approx(metrics["accuracy"])
        assert (reports / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    classification = json.loads((trained_project.reports("classification") / "metrics.json").read_text())
    assert classification["test_clips"] == 7 and classification["chance"] == pytest.approx(1 / 7)
    assert 0 <= classification["macro_f1"] <= 1 and {"precision_rotate", "recall_rotate", "f1_rotate"} <= set(
        classification
    )
    sync = json.loads((trained_project.reports("sync") / "metrics.json").read_text())
    assert (
        sync["test_clips"] == 1 and sync["examples"] == 7 * sync_inputs.EVAL_STARTS
    )  # every offset -3..3, 4 windows each
    assert sync["chance"] == pytest.approx(1 / 7) and 0 <= sync["accuracy"] <= sync["accuracy_within_1"] <= 1
    assert json.loads((trained_project.models("sync") / "labels.json").read_text()) == [str(k) for k in range(-3, 4)]
    context = pd.read_csv(trained_project.reports("sync") / "context.csv")
    assert context.to_dict("list") == {"frames": [4], "accuracy_within_1": [sync["accuracy_within_1_at_4"]]}


def test_evaluation_holds_a_few_test_clips_at_a_time_and_scores_as_one_read_does(
    trained_project, tiny_params, tmp_path, monkeypatch
):
    from vidops.components.tasks.sync.evaluation import evaluate_sync

    models, features = trained_project.models("classification"), trained_project.features("classification")
    whole = json.loads(evaluate_classifier(models, features, tmp_path / "whole").metrics_path.read_text())
    held, in_memory = [], inputs.in_memory
    monkeypatch.setattr(
        inputs, "in_memory", lambda split, field: held.append(len(split.paths)) or in_memory(split, field)
    )
    monkeypatch.setattr(classifier_evaluation, "CLIPS_A_READ", 2)
    chunked = json.loads(evaluate_classifier(models, features, tmp_path / "chunked").metrics_path.read_text())
    assert held == [2, 2, 2, 1] and chunked == pytest.approx(whole)  # the 7 test clips, 2 at a time

    sync = evaluate_sync(
        trained_project.models("sync"), trained_project.features("sync"), tmp_path / "sync", tiny_params.train.sync
    )
    assert held == [2, 2, 2, 1]  # the sync model's clips are read one by one, never as a split
    assert json.loads(sync.metrics_path.read_text()) == pytest.approx(
        json.loads((trained_project.reports("sync") / "metrics.json").read_text())
    )


def test_the_sync_validation_is_every_offset_of_every_held_clip_built_a_clip_at_a_time(trained_project, tiny_params):
    from vidops.components.io import read_arrays

    split, params = (
        inputs.open_split(trained_project.features("sync"), "train", ("frames", "audio")),
        tiny_params.train.sync,
    )
    batches = list(sync_inputs.sync_validation(split, params).as_numpy_iterator())
    assert all(len(x["frames"]) == params.batch_size for x, _, _ in batches[:-1])
    expected = [
        sync_inputs.sync_examples(*read_arrays(path, ["frames", "audio"]).values(), params, starts=1)
        for path in split.paths
    ]
    for field in ("frames", "audio"):
        assert np.array_equal(
            np.concatenate([x[field] for x, _, _ in batches]), np.concatenate([e[field] for e, _ in expected])
        )
    offsets = np.concatenate([y["offset"] for _, y, _ in batches]) - params.max_offset
    assert np.array_equal(offsets, np.concatenate([k for _, k in expected]))
    in_sync = np.concatenate([w["in_sync"] for _, _, w in batches])
    assert np.allclose(in_sync[offsets == 0], len(params.offsets) / 2) and np.allclose(
        in_sync[offsets != 0], 0.5 * len(params.offsets) / (2 * params.max_offset)
    )


def test_per_class_scores_are_precision_recall_and_f1():
    from vidops.components.tasks.classification.evaluation import per_class_scores

    scores = per_class_scores(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), ["a", "b"])
    assert scores == pytest.approx(
        {"precision_a": 1, "recall_a": 0.5, "f1_a": 2 / 3, "precision_b": 2 / 3, "recall_b": 1, "f1_b": 0.8}
    )


def test_loss_falls_on_a_small_learnable_set(trained_project, tmp_path):
    params = ClassifierParams(filters=(4, 8), epochs=12, batch_size=4, learning_rate=0.01, augment=False, patience=12)
    trained = train_classifier(trained_project.features("classification"), tmp_path / "model", params)
    loss = trained.history["loss"]
    assert min(loss[-3:]) < 0.5 * loss[0], loss


def test_evaluate_without_a_model_is_an_error(tmp_path):
    with pytest.raises(VidopsError, match="no trained model"):
        evaluate_classifier(tmp_path / "models", tmp_path / "features", tmp_path / "reports")


def test_a_training_stopped_between_a_model_and_its_state_resumes_from_the_last_whole_checkpoint(
    trained_project, tmp_path, monkeypatch
):
    """Exactly the model, optimizer and history of the last whole checkpoint are resumed, when the stop came after
    epoch 2's model was written and before its state was (the real kill -9 is test_a_killed_training_stage_...)."""
    from vidops.components import training

    features, models = trained_project.features("classification"), tmp_path / "model"
    three = ClassifierParams(filters=(4, 8), epochs=3, batch_size=4, patience=10)
    finished = train_classifier(features, models, three)
    assert finished.resumed_from == 0 and finished.epochs == 3
    assert not (models / CHECKPOINTS).exists()  # a finished training leaves no checkpoint behind

    class Killed(BaseException):
        pass

    def stop_at_epoch_two(path, data, *args, **kwargs):
        if path.name == "state.json" and data["epoch"] == 2:
            raise Killed
        return write_json(path, data, *args, **kwargs)

    starting_weights = []

    class RecordStart(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            starting_weights.append([w.copy() for w in self.model.get_weights()])

    write_json = training.write_json
    with monkeypatch.context() as patch:
        patch.setattr(training, "write_json", stop_at_epoch_two)
        with pytest.raises(Killed):
            train_classifier(features, models, three)
    state = json.loads((models / CHECKPOINTS / "state.json").read_text())
    assert (
        state["epoch"] == 1
        and len(state["history"]["loss"]) == 1
        and (models / CHECKPOINTS / "model-2.keras").is_file()
    )
    saved = keras.models.load_model(models / CHECKPOINTS / state["model"])
    assert int(saved.optimizer.iterations) == 3  # 14 clips make 3 whole batches of 4 an epoch: epoch 1's, not epoch 2's

    original_fit = keras.Model.fit
    with monkeypatch.context() as patch:
        patch.setattr(
            keras.Model,
            "fit",
            lambda self, *a, **k: original_fit(self, *a, **{**k, "callbacks": [*k["callbacks"], RecordStart()]}),
        )
        resumed = train_classifier(features, models, three)
    assert resumed.resumed_from == 1 and resumed.epochs == 3 and len(resumed.history["loss"]) == 3
    assert resumed.history["loss"][:1] == state["history"]["loss"]
    assert all(np.array_equal(a, b) for a, b in zip(starting_weights[0], saved.get_weights(), strict=True))


@pytest.mark.slow
def test_a_killed_training_stage_resumes_from_its_last_checkpoint(trained_project, tiny_params, tmp_path):
    """`vidops stage train` killed with -9, the spawned training process with it, once a checkpoint is written; the
    re-run resumes from that checkpoint's epoch and finishes."""
    project = tmp_path / "project"
    shutil.copytree(trained_project.root, project, ignore=shutil.ignore_patterns(".vidops", "models"))
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params.to_yaml_dict()))
    checkpoints = project / "models" / "classification" / CHECKPOINTS
    train = (
        "stage",
        "train",
        "--task",
        "classification",
        "--root",
        str(project),
        "--set",
        "train.classification.epochs=6",
    )
    command = faults.start(*train)
    faults.until(lambda: (checkpoints / "state.json").is_file(), "a first checkpoint", command)
    faults.kill_group(command)
    assert faults.group_gone(command.pid), "the training process outlived the killed command"
    state = json.loads((checkpoints / "state.json").read_text())  # the last checkpoint the kill left whole
    assert 1 <= state["epoch"] < 6 and (checkpoints / state["model"]).is_file()
    assert not (project / "models" / "classification" / "model.keras").exists()
    killed_run = json.loads((project / "models" / "classification" / "run.json").read_text())["run_id"]
    store = MlflowClient(f"sqlite:///{project / '.vidops' / 'mlflow.db'}")
    assert store.get_run(killed_run).info.status == "RUNNING"  # not FINISHED: it never finished

    again = faults.run(*train)
    assert again.returncode == 0, again.stderr
    assert re.match(rf"train classification: \d+ epochs \(resumed at epoch {state['epoch']}\)", again.stdout), (
        again.stdout
    )
    history = json.loads((project / "models" / "classification" / "history.json").read_text())
    assert history["loss"][: state["epoch"]] == state["history"]["loss"]  # the epochs before the kill, kept
    assert not checkpoints.exists()
    assert store.get_run(killed_run).info.status == "KILLED"  # not RUNNING for ever in the UI
    assert (
        store.get_run(
            json.loads((project / "models" / "classification" / "run.json").read_text())["run_id"]
        ).info.status
        == "FINISHED"
    )


def test_a_class_without_training_clips_fails_before_any_epoch(trained_project, tmp_path):
    features = tmp_path / "features"
    shutil.copytree(trained_project.features("classification"), features)
    index = pd.read_csv(features / "index.csv", keep_default_na=False)
    index.loc[(index["label"] == "rotate") & (index["split"] == "train"), "status"] = "error"
    index.to_csv(features / "index.csv", index=False)
    with pytest.raises(VidopsError, match="no training clips for class\\(es\\) rotate"):
        train_classifier(features, tmp_path / "model", ClassifierParams())
    assert not (tmp_path / "model").exists()


def _first_train_shard(features):
    index = pd.read_csv(features / "index.csv", keep_default_na=False)
    return features / "clips" / index[index["split"] == "train"]["shard"].iloc[0]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda shard: shard.unlink(), "shard listed in the index is missing"),
        (lambda shard: shard.write_bytes(shard.read_bytes()[:300]), "shard is damaged"),
        (
            lambda shard: np.savez(shard, **{**np.load(shard), "audio": np.full_like(np.load(shard)["audio"], np.nan)}),
            "audio features hold NaN",
        ),
    ],
)
def test_a_bad_shard_fails_before_any_epoch_and_names_the_shard(trained_project, tmp_path, damage, message):
    features = tmp_path / "features"
    shutil.copytree(trained_project.features("sync"), features)
    shard = _first_train_shard(features)
    damage(shard)
    with pytest.raises(VidopsError, match=f"{shard.name}: {message}"):
        train_sync(features, tmp_path / "model", SyncParams(window=4, max_offset=3, filters=(4,), units=8, epochs=1))
    assert not (tmp_path / "model").exists()


def test_a_window_and_offset_longer_than_the_clips_fail_before_any_epoch(trained_project, tmp_path):
    too_long = SyncParams(window=10, max_offset=6, filters=(4,), units=8)  # 22 frames; the shards hold 20
    with pytest.raises(
        VidopsError, match=r"clips of 20 frames are too short for train.sync.window \+ 2 x train.sync.max_offset = 22"
    ):
        train_sync(trained_project.features("sync"), tmp_path / "model", too_long)


def test_the_feed_holds_the_clips_in_memory_when_they_fit_the_budget_and_streams_them_when_not():
    params = ClassifierParams(memory_budget_mb=10, batch_size=4)
    mb = 1024**2
    fits = inputs.plan_feed(
        mb // 10, 30, params
    )  # 3 MB of clips, 2.4 MB in flight: 7.6 MB left, half of it to hold clips
    assert (fits.cache, fits.shuffle) == ("memory", 30)
    streamed = inputs.plan_feed(mb // 10, 40, params)
    assert (
        streamed.cache == "none" and streamed.shuffle == (100 - (4 * 4 + 8)) // 2 == 38
    )  # what the budget leaves for the buffer
    assert (
        inputs.plan_feed(mb // 10, 5000, params.model_copy(update={"cache": "memory"})).cache == "memory"
    )  # asked for
    assert inputs.plan_feed(mb // 10, 30, params.model_copy(update={"cache": "disk"})).cache == "disk"
    with pytest.raises(
        VidopsError,
        match=(
            r"train.sync.memory_budget_mb: 10 MB cannot hold .* "
            r"\(4 batches of 64 clips of 0.1 MB.* lower train.sync.batch_size"
        ),
    ):
        inputs.plan_feed(mb // 10, 5000, params.model_copy(update={"batch_size": 64}), "train.sync")


@pytest.mark.parametrize("cache", ["memory", "disk", "none"])
def test_every_feed_gives_every_clip_once_an_epoch_in_a_new_order(trained_project, cache):
    split = inputs.open_split(trained_project.features("classification"), "train", ("frames",))
    feed = inputs.Feed(cache, 3, 64 * 1024**2)  # a shuffle buffer of 3 clips
    frames = inputs.in_memory(split, "frames")
    clips = inputs.read_split(split, ("frames",), feed, seed=0)
    epochs = [list(clips.as_numpy_iterator()) for _ in range(2)]
    for epoch in epochs:
        order = [next(i for i, f in enumerate(frames) if np.array_equal(f, x)) for x, _ in epoch]
        assert sorted(order) == list(range(len(frames)))
        assert [label for _, label in epoch] == [split.labels[i] for i in order]
    assert [x.tobytes() for x, _ in epochs[0]] != [x.tobytes() for x, _ in epochs[1]]


def test_a_memory_budget_smaller_than_the_batches_in_flight_is_refused_before_any_work(trained_project, tiny_params):
    from vidops.components import stages

    params = load_params(None, [*TINY, "train.classification.memory_budget_mb=1", "train.classification.batch_size=64"])
    with pytest.raises(VidopsError, match=r"^train.classification.memory_budget_mb: 1 MB cannot hold"):
        stages.train(trained_project, params, "classification")


def test_mirroring_swaps_left_and_right_classes_only():
    names = ("move_down", "move_left", "move_right", "rotate", "turn-left", "turn-right")
    assert classifier_inputs.flip_labels(names) == [0, 2, 1, 3, 5, 4]


def test_augmentation_keeps_shape_and_type_and_mirrors_the_label_with_the_frames():
    import tensorflow as tf

    frames = np.zeros((64, 2, 16, 16, 3), np.uint8)
    frames[..., :8, :] = 255  # bright on the left half
    flipped = tf.constant([1, 0], tf.int32)  # class 0 mirrored is class 1
    tf.random.set_seed(0)
    out, labels = classifier_inputs.augment_clips(tf.constant(frames), tf.zeros(64, tf.int32), flipped)
    out, labels = out.numpy(), labels.numpy()
    assert out.shape == frames.shape and out.dtype == np.uint8
    left_brighter = out[..., :8, :].mean(axis=(1, 2, 3, 4)) > out[..., 8:, :].mean(axis=(1, 2, 3, 4))
    assert np.array_equal(left_brighter, labels == 0)  # mirrored exactly when the label says so
    assert 0 < labels.sum() < 64


def test_the_captioners_augmentation_crops_but_never_flips_or_recolours():
    import tensorflow as tf

    frames = np.zeros((64, 2, 16, 16, 3), np.uint8)
    frames[..., :8, 0] = 200  # red on the left half, a caption's "left" and "red" both at stake
    tf.random.set_seed(0)
    out = tf.dtypes.saturate_cast(inputs.crop_clips(tf.constant(frames)), tf.uint8).numpy()
    assert out.shape == frames.shape
    assert (out[..., :4, 0].min(axis=(1, 2, 3)) == 200).all() and (
        out[..., 12:, 0].max(axis=(1, 2, 3)) == 0
    ).all()  # never mirrored
    assert (out[..., 1:].max() == 0) and set(np.unique(out[..., 0])) - {
        0,
        200,
    }  # colours kept; the edge moved, somewhere resampled


def test_validation_is_carved_from_whole_training_groups_and_never_takes_a_class_last_group():
    paths = tuple(Path(f"{i}.npz") for i in range(10))
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1], np.int32)
    groups = ("a", "a", "b", "b", "c", "d", "e", "e", "f", "g")
    split = inputs.Split(paths, labels, ("x", "y"), {}, groups)
    train, held = inputs.carve_validation(split, 0.5)
    assert held is not None and set(train.groups).isdisjoint(held.groups)  # a group is never on both sides
    assert sorted(train.paths + held.paths) == sorted(paths)
    assert set(train.labels) == set(held.labels) == {0, 1}  # every class is in both
    assert len(set(held.groups)) == 4  # half of each class's groups: 2 of x's 4, 2 of y's 3 rounded
    assert inputs.carve_validation(split, 0.0) == (split, None)
    lone = inputs.Split(paths[:2], labels[:2], ("x",), {}, ("a", "a"))
    assert inputs.carve_validation(lone, 0.9) == (lone, None)  # a class's last group stays in training


def test_training_watches_validation_and_reports_every_epoch(trained_project, tmp_path):
    reported = []
    params = ClassifierParams(filters=(4,), epochs=3, batch_size=4, validation_fraction=0.5, patience=5)
    trained = train_classifier(
        trained_project.features("classification"), tmp_path, params, lambda *epoch: reported.append(epoch)
    )
    assert [(epoch, of) for epoch, of, _ in reported] == [(0, 3), (1, 3), (2, 3)]
    assert all({"loss", "accuracy", "val_loss", "val_accuracy"} <= set(metrics) for _, _, metrics in reported)
    assert len(trained.history["val_loss"]) == 3


def test_a_tf_config_that_cannot_work_is_named(monkeypatch):
    from vidops.components.training import prepare_device

    for config, said in (
        ("{workers", "TF_CONFIG: not JSON"),
        ('{"cluster": {}}', "its cluster names no workers"),
        (
            '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}',
            "not one of its cluster's \\(worker: 1\\)",
        ),
    ):
        monkeypatch.setenv("TF_CONFIG", config)
        with pytest.raises(VidopsError, match=said):
            prepare_device(ClassifierParams())

"""Training: the one loop every task's model is fitted by (`fit`), from tf.data pipelines over the shards.

A task's `train` prepares the device (`prepare_device`, first), carves its validation clips (`train_split`), builds its
input pipelines and hands `fit` how to build and compile its model. A validation split carved from the training groups
(never from the test split) is scored after every epoch and drives early stopping. Each epoch ends with a checkpoint
of the whole model (weights, optimizer state) and the epoch number, so a killed training resumes where it stopped; a
finished one removes it; and with a call of `on_epoch`, which reports the epoch's metrics (to MLflow and the Prefect
run's logs, in vidops's flows).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from vidops.components import cluster, encoders, inputs
from vidops.components.errors import VidopsError
from vidops.components.io import atomic_path, write_csv, write_json
from vidops.components.layout import HISTORY_FILE, INDEX_TABLE, LABELS_FILE, MODEL_FILE
from vidops.components.params import FitParams
from vidops.components.tasks import TrainedModel

CHECKPOINTS = "checkpoints"  # under the model folder, while a training runs
# The last epoch's learning rate, as a fraction of `learning_rate`. A cosine decay rather than halving the rate when
# the training loss stalls: over seeds, the demo classifier scores higher with it (measured: benchmarks/README.md).
FINAL_RATE = 0.02
EpochHook = Callable[[int, int, dict[str, float]], None]  # (epoch, of epochs, metrics): after every epoch


def train_split(
    features_dir: Path, fields: tuple[str, ...], validation_fraction: float
) -> tuple[inputs.Split, inputs.Split | None]:
    """The checked train split, less the validation groups carved from it (None when none can be spared); an error
    before the first epoch when it holds no clip."""
    split = inputs.open_split(features_dir, "train", fields)
    if not split.paths:
        raise VidopsError(f"{features_dir}: the train split has no usable clips")
    return inputs.carve_validation(split, validation_fraction)


@dataclass(frozen=True)
class Recipe:
    """How to build a task's model afresh, and what to compile it with."""

    build: Callable[[], keras.Model]
    loss: Any
    metrics: Any


def fit(
    strategy: tf.distribute.Strategy,
    recipe: Recipe,
    data: tuple[Any, int],
    validation: Any,
    labels: tuple[str, ...],
    features_dir: Path,
    model_dir: Path,
    params: FitParams,
    on_epoch: EpochHook | None = None,
) -> TrainedModel:
    """Resume from `model_dir`'s checkpoint of the same params and shards, or build the model; fit it on `data` (batches
    and steps per epoch) with a checkpoint after every epoch; save `model.keras`, `labels.json` (`labels`, in the order
    of the model's outputs) and `history.json` under `model_dir`.

    The learning rate and early stopping watch the validation loss; the training loss when `validation` is None.
    """
    key = _run_key(features_dir, params)
    checkpoints = model_dir / CHECKPOINTS
    state = _read_state(checkpoints, key)
    keras.utils.set_random_seed(params.seed)
    with strategy.scope():
        if state:
            fitted = keras.models.load_model(checkpoints / state["model"])  # compiled, with its optimizer's state
        else:
            fitted = recipe.build()
            xla = params.xla and bool(tf.config.list_physical_devices("GPU"))
            # the rate falls along a cosine to FINAL_RATE of its start over all the epochs' steps; the optimizer's step
            # count is in every checkpoint, so a resumed training carries on along the same curve
            rate = keras.optimizers.schedules.CosineDecay(
                params.learning_rate, params.epochs * data[1], alpha=FINAL_RATE
            )
            fitted.compile(
                optimizer=keras.optimizers.Adam(rate), loss=recipe.loss, metrics=recipe.metrics, jit_compile=xla
            )
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3's fit would reduce its first batch across the workers to build the model, which the strategy
            # rejects (keras-team/keras#20585): built here from one local batch, the model needs no build in fit
            fitted._symbolic_build(data_batch=next(iter(data[0])))
            fitted._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    start = state["epoch"] if state else 0
    history = state["history"] if state else {}
    # Early stopping keeps the weights of the best validation loss, but only from half the epochs on: batch norm's
    # moving statistics lag the fit, and a small validation split gives a noisy loss, so a training stopped sooner
    # often ends short of what it reaches by the last epoch (measured: benchmarks/README.md).
    watched = "val_loss" if validation is not None else "loss"
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor=watched,
            patience=params.patience,
            restore_best_weights=True,
            start_from_epoch=max(params.patience, params.epochs // 2),
        ),
        _Checkpoint(checkpoints, key, history, params.epochs, on_epoch),
    ]
    batches, steps = data
    fitted.fit(
        batches,
        steps_per_epoch=steps,
        validation_data=validation,
        epochs=params.epochs,
        initial_epoch=start,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    with atomic_path(model_dir / MODEL_FILE) as tmp:
        fitted.save(tmp)
    write_json(model_dir / LABELS_FILE, list(labels))
    write_json(model_dir / HISTORY_FILE, history)
    shutil.rmtree(checkpoints, ignore_errors=True)  # finished: the next training starts afresh
    return TrainedModel(model_dir / MODEL_FILE, labels, len(history.get("loss", [])), start, history)


def prepare_device(params: FitParams) -> tf.distribute.Strategy:
    """Memory growth, precision, determinism; the distribution strategy for the devices there are.

    MultiWorkerMirroredStrategy when TF_CONFIG names a cluster (`components.cluster`), MirroredStrategy over several
    GPUs, else the default strategy (one GPU or the CPU).
    """
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if params.mixed_precision and gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
    if params.deterministic:
        tf.config.experimental.enable_op_determinism()
    if cluster.worker():
        _mend_keras_multi_worker()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _mend_keras_multi_worker() -> None:
    """Keras 3's fit reduces each step's logs across workers with `strategy.reduce("MEAN", value, axis=0)`, which
    MultiWorkerMirroredStrategy rejects for a scalar (keras-team/keras#20585; Keras 3.15, TF 2.21): reduce them over
    the replicas alone. `fit` mends the other failure, the first batch's reduction before fit builds the model."""
    from keras.src.backend.tensorflow import trainer

    reduce = trainer.reduce_per_replica
    if getattr(reduce, "mended", False):
        return

    def mended(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            per_replica = lambda v: (
                strategy.reduce("MEAN", v, axis=None) if isinstance(v, tf.distribute.DistributedValues) else v
            )
            return tf.nest.map_structure(per_replica, values)
        return reduce(values, strategy, reduction)

    mended.mended = True  # type: ignore[attr-defined]
    trainer.reduce_per_replica = mended


def _run_key(features_dir: Path, params: FitParams) -> str:
    """What a checkpoint belongs to: these params, exactly these shards, and the content of the encoder's weights
    file."""
    digest = hashlib.sha256(params.model_dump_json().encode() + (features_dir / INDEX_TABLE).read_bytes())
    weights = encoders.weights_file(params)
    if weights is not None and weights.is_file():
        digest.update(weights.read_bytes())
    return digest.hexdigest()[:16]


# models/<task>/checkpoints/: the last whole checkpoint: its epoch, history and model file
CHECKPOINT_STATE = "state.json"


def _read_state(checkpoints: Path, key: str) -> dict[str, Any] | None:
    """The last whole checkpoint of this key: its state, which names its model file."""
    state_file = checkpoints / CHECKPOINT_STATE
    if not state_file.is_file():
        return None
    state = json.loads(state_file.read_text())
    if state.get("key") != key or not (checkpoints / state.get("model", "")).is_file():
        return None  # another training's, or one from before checkpoints named their model
    return state


class _Checkpoint(keras.callbacks.Callback):
    """After each epoch: the model with its optimizer under a name of its epoch, then the state (epoch, history, that
    file's name), then the report. The state names the model file, and the previous one is removed only once the new
    state is written: a training killed between the two writes resumes from the last epoch whose state is whole, never
    a newer model under an older epoch and history."""

    def __init__(
        self, folder: Path, key: str, history: dict[str, list[float]], epochs: int, on_epoch: EpochHook | None
    ) -> None:
        super().__init__()
        self.folder, self.key, self.history, self.epochs, self.on_epoch = folder, key, history, epochs, on_epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        metrics = {name: float(value) for name, value in (logs or {}).items()}
        for name, value in metrics.items():
            self.history.setdefault(name, []).append(value)
        # the schedule's, now
        metrics["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        saved = f"model-{epoch + 1}.keras"
        with atomic_path(self.folder / saved) as tmp:
            self.model.save(tmp)
        # written second: a state file always describes a whole checkpoint
        write_json(
            self.folder / CHECKPOINT_STATE,
            {"key": self.key, "epoch": epoch + 1, "history": self.history, "model": saved},
        )
        for older in self.folder.glob("model-*.keras"):
            if older.name != saved:
                older.unlink(missing_ok=True)
        if self.on_epoch:
            self.on_epoch(epoch, self.epochs, metrics)


def write_curves(history: dict[str, list[float]], path: Path) -> Path:
    """The training curves as a table (epoch, then one column per metric): what `dvc plots` draws."""
    import pandas as pd

    curves = pd.DataFrame(history)
    curves.insert(0, "epoch", range(len(curves)))
    write_csv(path, curves)
    return path

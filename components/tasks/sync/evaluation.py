"""The sync model on the held-out split: offset accuracy, exact and within +-1 frame (the LRS2 protocol), mean absolute
error in frames, the in-sync head's balanced accuracy, and accuracy against context length."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidops.components import inputs
from vidops.components.evaluation import Evaluation, held_out, load_trained, write_report
from vidops.components.io import read_arrays, write_csv
from vidops.components.tasks.sync.inputs import sync_examples
from vidops.components.tasks.sync.params import SyncParams

CONTEXT = "context.csv"  # reports/sync/: accuracy within +-1 frame against the window's length
CONTEXT_LENGTHS = (5, 7, 9, 11, 13, 15)  # window lengths, in frames, that accuracy is reported against


def evaluate_sync(model_dir: Path, features_dir: Path, reports_dir: Path, params: SyncParams) -> Evaluation:
    """Offset accuracy, exact and within +-1 frame (the LRS2 protocol), and mean absolute error in frames, for windows
    of `params.window` frames; and accuracy within +-1 against context length, 5 to `params.window` frames (as the
    LRS2 protocol reports it), in `CONTEXT`.

    Every test clip gives every offset k in [-K, K] at a few evenly spaced windows, so each
    offset counts the same.
    """
    model, _ = load_trained(model_dir, __package__)
    split = held_out(features_dir, ("frames", "audio"))
    lengths = [n for n in CONTEXT_LENGTHS if n < params.window]
    (t, p, s), *shorter = _offsets(model, split, [params, *(params.model_copy(update={"window": n}) for n in lengths)])
    by_length = {
        n: float(np.mean(np.abs(predicted - truth) <= 1))
        for n, (truth, predicted, _) in zip(lengths, shorter, strict=True)
    }
    by_length[params.window] = float(np.mean(np.abs(p - t) <= 1))
    write_csv(
        reports_dir / CONTEXT, pd.DataFrame({"frames": list(by_length), "accuracy_within_1": list(by_length.values())})
    )
    error = np.abs(p - t)
    metrics = {
        "accuracy": float(np.mean(error == 0)),
        "accuracy_within_1": float(np.mean(error <= 1)),
        "mae_frames": float(np.mean(error)),
        "in_sync_accuracy": float((np.mean(s[t == 0]) + np.mean(~s[t != 0])) / 2),  # balanced: k = 0 is rare
        "chance": 1 / len(params.offsets),
        "chance_within_1": 3 / len(params.offsets),
        "test_clips": len(split.paths),
        "examples": len(t),
        **{f"accuracy_within_1_at_{n}": value for n, value in by_length.items()},
    }
    return write_report(
        reports_dir, metrics, [int(k) for k in t], [int(k) for k in p], [str(k) for k in params.offsets]
    )


def _offsets(
    model: Any, split: inputs.Split, windows: list[SyncParams]
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each of `windows`: true offsets, predicted offsets and in-sync answers over every clip's evaluation windows
    of its `window` frames; the clips read one at a time."""
    found: list[tuple[list[np.ndarray], ...]] = [([], [], []) for _ in windows]
    for path in split.paths:
        clip = read_arrays(path, ["frames", "audio"])
        for params, (truth, predicted, in_sync) in zip(windows, found, strict=True):
            examples, offsets = sync_examples(clip["frames"], clip["audio"], params)
            out = model.predict(examples, batch_size=128, verbose=0)
            truth.append(offsets)
            predicted.append(np.asarray(params.offsets)[np.argmax(out["offset"], axis=1)])
            in_sync.append(out["in_sync"][:, 0] > 0.5)
    return [
        (np.concatenate(truth), np.concatenate(predicted), np.concatenate(in_sync))
        for truth, predicted, in_sync in found
    ]

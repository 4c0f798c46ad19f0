"""Evaluation on the held-out split: the classifier's accuracy, macro F1, per-class scores and confusion; the sync
model's offset errors, also against context length; the captioner's BLEU-4, CIDEr-D and attribute accuracy beside
two baselines.

Each writes `metrics.json`, `confusion.csv` (actual, predicted: the format of `dvc plots`) and `confusion.png`.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidops.components import inputs, text
from vidops.components.errors import VidopsError
from vidops.components.io import atomic_path, read_arrays, write_csv, write_json
from vidops.components.layout import LABELS_FILE, MODEL_FILE
from vidops.components.params import CaptionerParams, SyncParams

METRICS = "metrics.json"
CONFUSION = "confusion.csv"
SAMPLES_TABLE = "samples.md"  # captioning: a few test clips, their references and the caption said
SAMPLES = 8
CLIPS_A_READ = 128  # test clips held at once (UCF101-sized, 16 frames of 112 px: 77 MB), whatever the split's size
CONTEXT_LENGTHS = (5, 7, 9, 11, 13, 15)  # sync: window lengths, in frames, that accuracy is reported against


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    metrics_path: Path
    confusion_path: Path
    samples_path: Path | None = None  # a markdown table of test clips and what the model said of them, for the run's report


def evaluate_classifier(model_dir: Path, features_dir: Path, reports_dir: Path) -> Evaluation:
    """Accuracy (overall and per class) of the classifier on the test split."""
    model, labels = _load(model_dir)
    split = _test_split(features_dir, ("frames",))
    predicted = np.concatenate([np.argmax(model.predict(frames, verbose=0), axis=1) for frames in inputs.in_chunks(split, "frames", CLIPS_A_READ)])
    truth = split.labels
    per_class = per_class_scores(truth, predicted, labels)
    f1 = [per_class[f"f1_{label}"] for i, label in enumerate(labels) if np.any(truth == i)]
    metrics = {"accuracy": float(np.mean(predicted == truth)), "macro_f1": float(np.mean(f1)), "chance": 1 / len(labels), "test_clips": len(truth), **per_class}
    return _write(reports_dir, metrics, [labels[i] for i in truth], [labels[i] for i in predicted], labels)


def per_class_scores(truth: np.ndarray, predicted: np.ndarray, labels: list[str]) -> dict[str, float]:
    """Precision, recall and F1 of each class (0 where a class is never predicted or never true)."""
    scores = {}
    for i, label in enumerate(labels):
        hits = float(np.sum((predicted == i) & (truth == i)))
        precision = hits / max(1, int(np.sum(predicted == i)))
        recall = hits / max(1, int(np.sum(truth == i)))
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores |= {f"precision_{label}": precision, f"recall_{label}": recall, f"f1_{label}": f1}
    return scores


def evaluate_sync(model_dir: Path, features_dir: Path, reports_dir: Path, params: SyncParams) -> Evaluation:
    """Offset accuracy, exact and within +-1 frame (the LRS2 protocol), and mean absolute error in frames, for windows of
    `params.window` frames; and accuracy within +-1 against context length, 5 to `params.window` frames (as the LRS2
    protocol reports it), in `context.csv`.

    Every test clip gives every offset k in [-K, K] at a few evenly spaced windows, so each
    offset counts the same.
    """
    model, _ = _load(model_dir)
    split = _test_split(features_dir, ("frames", "audio"))
    lengths = [n for n in CONTEXT_LENGTHS if n < params.window]
    (t, p, s), *shorter = _offsets(model, split, [params, *(params.model_copy(update={"window": n}) for n in lengths)])
    by_length = {n: float(np.mean(np.abs(predicted - truth) <= 1)) for n, (truth, predicted, _) in zip(lengths, shorter, strict=True)}
    by_length[params.window] = float(np.mean(np.abs(p - t) <= 1))
    write_csv(reports_dir / "context.csv", pd.DataFrame({"frames": list(by_length), "accuracy_within_1": list(by_length.values())}))
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
    return _write(reports_dir, metrics, [int(k) for k in t], [int(k) for k in p], [str(k) for k in params.offsets])


def evaluate_captioner(model_dir: Path, features_dir: Path, reports_dir: Path, params: CaptionerParams) -> Evaluation:
    """BLEU-4, CIDEr-D and attribute accuracy of the captions the model says for the test clips, beside two baselines
    scored the same way: the most frequent training caption, and the nearest neighbour's (the training clip whose
    encoder features are closest). Attribute accuracy (the shape, colour and motion a caption states all match the
    references') is also split by whether the clip's combination of attributes was seen in training.

    Also `samples.md` and `samples.png` (frames, references, the caption said) and, as `confusion.csv`, each stated
    attribute against the references'.
    """
    from vidops.components import decoding
    from vidops.components.generate import caption_attributes
    from vidops.components.text import Vocabulary, words

    model, tokens = _load(model_dir)
    vocabulary = Vocabulary.from_tokens(tokens)
    test, train = _test_split(features_dir, ("frames",)), inputs.open_split(features_dir, "train", ("frames",))
    captions = inputs.read_captions(features_dir)
    normal = lambda caption: " ".join(words(caption))  # noqa: E731  the form the model says a caption in
    references = [[normal(c) for c in captions[clip]] for clip in test.clips]
    encoded = lambda split: np.concatenate([decoding.encode_frames(model, f) for f in inputs.in_chunks(split, "frames", CLIPS_A_READ)])  # noqa: E731
    features = encoded(test)  # once: the captions and the nearest neighbours both start here
    beams = decoding.captions(model, features, vocabulary, params.beam_size, params.max_length, params.length_penalty)
    training_captions = [normal(c) for clip in train.clips for c in captions[clip]]
    nearest = _nearest_neighbour(features, encoded(train))
    said = {
        "": [beam[0].text for beam in beams],
        "_most_frequent": [Counter(training_captions).most_common(1)[0][0]] * len(test.clips),
        "_nearest_neighbour": [normal(captions[train.clips[i]][0]) for i in nearest],
    }
    truth = [_attributes(refs, caption_attributes) for refs in references]
    seen = {tuple(sorted(a.items())) for a in (_attributes([normal(c) for c in captions[clip]], caption_attributes) for clip in train.clips) if a}
    unseen = np.array([bool(a) and tuple(sorted(a.items())) not in seen for a in truth])
    metrics: dict[str, Any] = {"test_clips": len(test.clips), "unseen_combination_clips": int(unseen.sum()),
                               "captions_over_max_length": sum(len(words(c)) > params.max_length for cs in captions.values() for c in cs)}  # fmt: skip
    for suffix, hypotheses in said.items():
        stated = [caption_attributes(h) for h in hypotheses]
        right = np.array([bool(t) and s == t for s, t in zip(stated, truth, strict=True)])
        metrics |= {f"bleu4{suffix}": text.bleu4(hypotheses, references), f"cider_d{suffix}": text.cider_d(hypotheses, references)}
        if any(truth):  # references that state the attributes: the demo's, or a user's that use its words
            scored = np.array([bool(t) for t in truth])
            metrics[f"attribute_accuracy{suffix}"] = float(right[scored].mean())
            for name, clips in (("seen", scored & ~unseen), ("unseen", unseen)):
                if clips.any():  # a split with no such clip has no figure, rather than a null one
                    metrics[f"attribute_accuracy_{name}_combinations{suffix}"] = float(right[clips].mean())
    _samples(reports_dir, test, references, beams)
    pairs = [(t[key], caption_attributes(h).get(key, "(none)")) for t, h in zip(truth, said[""], strict=True) for key in sorted(t)]
    classes = sorted({value for pair in pairs for value in pair})
    scored = _write(reports_dir, metrics, [a for a, _ in pairs], [p for _, p in pairs], classes)
    return dataclasses.replace(scored, samples_path=reports_dir / SAMPLES_TABLE)


def _attributes(references: list[str], parse: Any) -> dict[str, str]:
    """The attributes every reference of a clip states alike ({} when they state none, or disagree)."""
    parsed = [parse(r) for r in references]
    keys = set.intersection(*(set(p) for p in parsed)) if parsed else set()
    return {k: parsed[0][k] for k in sorted(keys) if all(p[k] == parsed[0][k] for p in parsed)}


def _nearest_neighbour(test_features: np.ndarray, train_features: np.ndarray) -> np.ndarray:
    """For each test clip, the index of the training clip whose encoder features are closest (cosine)."""

    def unit(features: np.ndarray) -> np.ndarray:
        flat = features.reshape(len(features), -1)
        return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-8)

    return np.argmax(unit(test_features) @ unit(train_features).T, axis=1)


def _samples(reports_dir: Path, test: inputs.Split, references: list[list[str]], beams: list[Any]) -> None:
    """`samples.md` (a table: clip, references, the caption said and the beam's others) and `samples.png` (each
    sample's frames beside its text), for a few test clips spread over the split."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    clips = test.clips
    picks = sorted(set(np.linspace(0, len(clips) - 1, min(SAMPLES, len(clips))).round().astype(int)))
    rows = ["| clip | references | said | also in the beam |", "|---|---|---|---|"]
    figure, axes = plt.subplots(len(picks), 2, figsize=(12, 1.6 * len(picks)), squeeze=False, gridspec_kw={"width_ratios": [2, 3]})
    for row, i in zip(axes, picks, strict=True):
        others = "; ".join(f"{b.text} ({b.score:.2f})" for b in beams[i][1:])
        rows.append(f"| `{clips[i]}` | {'<br>'.join(references[i])} | **{beams[i][0].text}** | {others} |")
        frames = read_arrays(test.paths[i], ["frames"])["frames"]
        strip = frames[np.linspace(0, len(frames) - 1, 4).round().astype(int)]
        row[0].imshow(np.concatenate(list(strip), axis=1))
        row[1].text(0, 0.5, f"said: {beams[i][0].text}\n" + "\n".join(f"ref: {r}" for r in references[i]), va="center", fontsize=8, wrap=True)
        for axis in row:
            axis.axis("off")
    figure.tight_layout()
    with atomic_path(reports_dir / "samples.png") as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    plt.close(figure)
    with atomic_path(reports_dir / SAMPLES_TABLE) as tmp:
        tmp.write_text("\n".join(rows) + "\n")


def _offsets(model: Any, split: inputs.Split, windows: list[SyncParams]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each of `windows`: true offsets, predicted offsets and in-sync answers over every clip's evaluation windows
    of its `window` frames; the clips read one at a time."""
    found: list[tuple[list[np.ndarray], ...]] = [([], [], []) for _ in windows]
    for path in split.paths:
        clip = read_arrays(path, ["frames", "audio"])
        for params, (truth, predicted, in_sync) in zip(windows, found, strict=True):
            examples, offsets = inputs.sync_examples(clip["frames"], clip["audio"], params)
            out = model.predict(examples, batch_size=128, verbose=0)
            truth.append(offsets)
            predicted.append(np.asarray(params.offsets)[np.argmax(out["offset"], axis=1)])
            in_sync.append(out["in_sync"][:, 0] > 0.5)
    return [(np.concatenate(truth), np.concatenate(predicted), np.concatenate(in_sync)) for truth, predicted, in_sync in found]


def _load(model_dir: Path) -> tuple[Any, list[str]]:
    from vidops.components.models import load_model

    if not (model_dir / MODEL_FILE).is_file():
        raise VidopsError(f"{model_dir / MODEL_FILE}: no trained model; run the train stage first")
    return load_model(model_dir / MODEL_FILE), json.loads((model_dir / LABELS_FILE).read_text())


def _test_split(features_dir: Path, fields: tuple[str, ...]) -> inputs.Split:
    split = inputs.open_split(features_dir, "test", fields)
    if not split.paths:
        raise VidopsError(f"{features_dir}: the test split is empty; nothing to evaluate on")
    return split


def _write(reports_dir: Path, metrics: dict[str, Any], actual: list[Any], predicted: list[Any], classes: list[str]) -> Evaluation:
    """metrics.json; the confusion pairs as CSV (for `dvc plots`) and as a matrix image (for MLflow)."""
    write_json(reports_dir / METRICS, metrics)
    pairs = pd.DataFrame({"actual": actual, "predicted": predicted})
    write_csv(reports_dir / CONFUSION, pairs)
    _confusion_image(pairs.astype(str), classes, reports_dir / "confusion.png")
    return Evaluation(metrics, reports_dir / METRICS, reports_dir / CONFUSION)


def _confusion_image(pairs: pd.DataFrame, classes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display, and no GUI toolkit to import
    from matplotlib import pyplot as plt

    counts = pd.crosstab(pairs["actual"], pairs["predicted"]).reindex(index=classes, columns=classes, fill_value=0)
    side = 2 + 0.3 * len(classes)
    figure, axis = plt.subplots(figsize=(side + 1, side))
    image = axis.imshow(counts.to_numpy(), cmap="Blues")
    ticks = range(len(classes))
    axis.set(xticks=ticks, yticks=ticks, xlabel="predicted", ylabel="actual", title="confusion on the held-out split")
    axis.set_xticklabels(classes, rotation=90, fontsize=7)
    axis.set_yticklabels(classes, fontsize=7)
    figure.colorbar(image)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)

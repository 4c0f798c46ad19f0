"""The captioner on the held-out split: BLEU-4 and CIDEr-D beside two baselines scored the same way, for any caption
dataset; on captions in the demo's words, also attribute accuracy; and sample captions for the run's report."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from vidops.components import decoding, inputs, text
from vidops.components.evaluation import CLIPS_A_READ, Evaluation, held_out, load_trained, write_report
from vidops.components.io import atomic_path, read_arrays
from vidops.components.tasks.captioning.generate import caption_attributes
from vidops.components.tasks.captioning.params import CaptionerParams
from vidops.components.text import Vocabulary, words

SAMPLES_TABLE = "samples.md"  # a few test clips, their references and the caption said
SAMPLES = 8
BASELINES = ("_most_frequent", "_nearest_neighbour")  # the suffixes of the baselines' metrics


def evaluate_captioner(model_dir: Path, features_dir: Path, reports_dir: Path, params: CaptionerParams) -> Evaluation:
    """BLEU-4 and CIDEr-D of the captions the model says for the test clips, beside two baselines scored the same way:
    the most frequent training caption, and the nearest neighbour's (the training clip whose encoder features are
    closest). Where the references state the demo's attributes (shape, colour, motion), also `attribute_accuracy`.

    Also `samples.md` and `samples.png` (frames, references, the caption said) and, as `confusion.csv`, each stated
    attribute against the references' (no rows for captions in other words).
    """
    model, tokens = load_trained(model_dir, __package__)
    vocabulary = Vocabulary.from_tokens(tokens)
    test, train = held_out(features_dir, ("frames",)), inputs.open_split(features_dir, "train", ("frames",))
    captions = inputs.read_captions(features_dir)
    references = [[_normal(c) for c in captions[clip]] for clip in test.clips]
    training_references = [[_normal(c) for c in captions[clip]] for clip in train.clips]

    def encoded(split: inputs.Split) -> np.ndarray:
        return np.concatenate(
            [decoding.encode_frames(model, f) for f in inputs.in_chunks(split, "frames", CLIPS_A_READ)]
        )

    features = encoded(test)  # once: the captions and the nearest neighbours both start here
    beams = decoding.captions(model, features, vocabulary, params.beam_size, params.max_length, params.length_penalty)
    most_frequent = Counter(c for clip in training_references for c in clip).most_common(1)[0][0]
    said = {
        "": [beam[0].text for beam in beams],
        "_most_frequent": [most_frequent] * len(test.clips),
        "_nearest_neighbour": [training_references[i][0] for i in _nearest_neighbour(features, encoded(train))],
    }
    over = sum(len(words(c)) > params.max_length for cs in captions.values() for c in cs)
    metrics: dict[str, Any] = {"test_clips": len(test.clips), "captions_over_max_length": over}
    for suffix, hypotheses in said.items():
        metrics |= {
            f"bleu4{suffix}": text.bleu4(hypotheses, references),
            f"cider_d{suffix}": text.cider_d(hypotheses, references),
        }
    attributes, pairs = _attribute_scores(references, training_references, said)
    metrics |= attributes
    _samples(reports_dir, test, references, beams)
    classes = sorted({value for pair in pairs for value in pair})
    scored = write_report(reports_dir, metrics, [a for a, _ in pairs], [p for _, p in pairs], classes)
    return dataclasses.replace(scored, samples_path=reports_dir / SAMPLES_TABLE)


def _normal(caption: str) -> str:
    """A caption in the form the model says one: its words, lower-cased, joined by spaces."""
    return " ".join(words(caption))


def _attribute_scores(
    references: list[list[str]], training_references: list[list[str]], said: dict[str, list[str]]
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Attribute accuracy of each of `said` (the shape, colour and motion a caption states all match what every
    reference of the clip states alike), over the clips whose references state them, also split by whether the clip's
    combination was seen in training; and the model's (reference, stated) pairs of each attribute. Nothing for
    references that state none: a user's captions in other words."""
    truth = [_attributes(refs) for refs in references]
    scored = np.array([bool(t) for t in truth])
    if not scored.any():
        return {}, []
    seen = {tuple(sorted(a.items())) for a in map(_attributes, training_references) if a}
    unseen = np.array([bool(t) and tuple(sorted(t.items())) not in seen for t in truth])
    metrics: dict[str, Any] = {"unseen_combination_clips": int(unseen.sum())}
    for suffix, hypotheses in said.items():
        right = np.array([bool(t) and caption_attributes(h) == t for h, t in zip(hypotheses, truth, strict=True)])
        metrics[f"attribute_accuracy{suffix}"] = float(right[scored].mean())
        for name, clips in (("seen", scored & ~unseen), ("unseen", unseen)):
            if clips.any():  # a split with no such clip has no figure, rather than a null one
                metrics[f"attribute_accuracy_{name}_combinations{suffix}"] = float(right[clips].mean())
    pairs = [
        (t[key], caption_attributes(h).get(key, "(none)"))
        for t, h in zip(truth, said[""], strict=True)
        for key in sorted(t)
    ]
    return metrics, pairs


def _attributes(references: list[str]) -> dict[str, str]:
    """The attributes every reference of a clip states alike ({} when they state none, or disagree)."""
    parsed = [caption_attributes(r) for r in references]
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
    figure, axes = plt.subplots(
        len(picks), 2, figsize=(12, 1.6 * len(picks)), squeeze=False, gridspec_kw={"width_ratios": [2, 3]}
    )
    for row, i in zip(axes, picks, strict=True):
        others = "; ".join(f"{b.text} ({b.score:.2f})" for b in beams[i][1:])
        rows.append(f"| `{clips[i]}` | {'<br>'.join(references[i])} | **{beams[i][0].text}** | {others} |")
        frames = read_arrays(test.paths[i], ["frames"])["frames"]
        strip = frames[np.linspace(0, len(frames) - 1, 4).round().astype(int)]
        row[0].imshow(np.concatenate(list(strip), axis=1))
        lines = f"said: {beams[i][0].text}\n" + "\n".join(f"ref: {r}" for r in references[i])
        row[1].text(0, 0.5, lines, va="center", fontsize=8, wrap=True)
        for axis in row:
            axis.axis("off")
    figure.tight_layout()
    with atomic_path(reports_dir / "samples.png") as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    plt.close(figure)
    with atomic_path(reports_dir / SAMPLES_TABLE) as tmp:
        tmp.write_text("\n".join(rows) + "\n")

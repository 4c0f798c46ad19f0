"""Video captioning: a clip's frames in, a sentence that says what happens in it out.

A CNN frame encoder (the swappable one) and an LSTM decoder that attends over the frames, trained with teacher forcing
on each clip's reference captions (`captions.csv` beside the clips); beam search with a length penalty says the
caption. The model's labels are its vocabulary, built from the training captions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vidops.components import encoders
from vidops.components.params import ExtractParams, GenerateParams, ModelRegistryParams, Task
from vidops.components.tasks import TaskDefaults, TaskSpec, TrainedModel
from vidops.components.tasks.captioning.generate import generate
from vidops.components.tasks.captioning.params import CaptionerParams


def train(features_dir: Path, model_dir: Path, params: CaptionerParams, on_epoch: Any = None) -> TrainedModel:
    from vidops.components.tasks.captioning.train import train_captioner  # TensorFlow: in the training process only

    return train_captioner(features_dir, model_dir, params, on_epoch)


def evaluate(model_dir: Path, features_dir: Path, reports_dir: Path, params: CaptionerParams) -> Any:
    from vidops.components.tasks.captioning.evaluation import evaluate_captioner

    return evaluate_captioner(model_dir, features_dir, reports_dir, params)


def headline(metrics: dict[str, Any]) -> str:
    attributes = ""
    if metrics.get("attribute_accuracy") is not None:  # captions in the demo's words
        attributes = (
            f"attribute accuracy {metrics['attribute_accuracy']:.3f} "
            f"(nearest neighbour {metrics['attribute_accuracy_nearest_neighbour']:.3f}), "
        )
    return (
        f"{attributes}BLEU-4 {metrics['bleu4']:.1f} (nearest neighbour {metrics['bleu4_nearest_neighbour']:.1f}),"
        f" CIDEr-D {metrics['cider_d']:.1f} (nearest neighbour {metrics['cider_d_nearest_neighbour']:.1f})"
        f" on {metrics['test_clips']} held-out clips"
    )


def input_example(clip: dict[str, np.ndarray], params: CaptionerParams) -> dict[str, np.ndarray]:
    """The clip's frames and a caption of only <start>: what the model reads for its first word."""
    from vidops.components.text import START

    return {"frames": clip["frames"][None], "tokens": np.array([[START]], np.int32)}


def predict(model: Any, clip: Any, labels: list[str], params: CaptionerParams) -> dict[str, Any]:
    """The caption, its score (log-probability over the length penalty), and the beam's other captions with theirs."""
    from vidops.components.decoding import captions, encode_frames
    from vidops.components.text import Vocabulary

    features = encode_frames(model, clip.frames[None])
    vocabulary = Vocabulary.from_tokens(labels)
    beam = captions(model, features, vocabulary, params.beam_size, params.max_length, params.length_penalty)[0]
    others = [{"caption": c.text, "score": c.score} for c in beam[1:]]
    return {"caption": beam[0].text, "score": beam[0].score, "alternatives": others}


def check(name: Task, extract: ExtractParams, train: CaptionerParams) -> None:
    encoders.check_params(name, train, extract.size)
    if extract.sampler == "dense" and extract.runs > 1:
        raise ValueError(f"extract.{name}.runs: the captioner reads one run of frames a clip; use 1")


SPEC = TaskSpec(
    name="captioning",
    defaults=TaskDefaults(
        dataset="demo-captions",
        # a served clip too short is a 400, not a padded guess
        extract=ExtractParams(frames=8, size=48, audio="none", short_clips="skip"),
        train=CaptionerParams(),
        # CIDEr-D: written for any captions; the floor is well above what a model that says the most frequent caption
        # scores on the demo data (benchmarks/README.md)
        registry=ModelRegistryParams(model_name="vidops-captioner", metric="cider_d", floor=100.0),
        generate=GenerateParams(clips_per_class=80, size=64),  # 4 clips of each of a motion's 20 (shape, colour) pairs
    ),
    train=train,
    evaluate=evaluate,
    metrics=("bleu4", "cider_d"),
    headline=headline,
    input_example=input_example,
    predict=predict,
    check=check,
    preflight=encoders.check_weights_present,
    captioned=True,
    labelled=False,  # its labels are words, not classes of the clips
    min_classes=1,
    order=3,
    generate=generate,  # shapes whose shape, colour and motion a sentence states
)

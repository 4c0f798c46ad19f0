"""The captioner fitted on the train split's clips and their reference captions, through the shared loop."""

from __future__ import annotations

from pathlib import Path

import keras

from vidops.components import encoders, inputs, training
from vidops.components.tasks import TrainedModel
from vidops.components.tasks.captioning.inputs import caption_dataset, caption_feed, caption_ids, caption_validation
from vidops.components.tasks.captioning.model import build_captioner
from vidops.components.tasks.captioning.params import CaptionerParams
from vidops.components.text import PAD, Vocabulary


def train_captioner(
    features_dir: Path, model_dir: Path, params: CaptionerParams, on_epoch: training.EpochHook | None = None
) -> TrainedModel:
    """Fit the captioner; its labels are the vocabulary's tokens, built from the training clips' captions only (the
    validation clips' words may be <unk>, as a user's will be)."""
    encoders.check_weights("captioning", params)  # a weights file that does not fit: named before any epoch
    strategy = training.prepare_device(params)
    split, held = training.train_split(features_dir, ("frames",), params.validation_fraction)
    captions = inputs.read_captions(features_dir)
    vocabulary = Vocabulary.build((c for clip in split.clips for c in captions.get(clip, ())), params.min_word_count)
    references = caption_ids(split, captions, vocabulary, params.max_length)
    feed = caption_feed(split, held, references, params)
    data = caption_dataset(split, references, params, feed)
    validation = None
    if held:
        validation = caption_validation(held, caption_ids(held, captions, vocabulary, params.max_length), params, feed)
    frames, size = split.shapes["frames"][0], split.shapes["frames"][1]
    recipe = training.Recipe(
        build=lambda: build_captioner(frames, size, len(vocabulary), params),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=PAD),
        metrics=[],
    )
    return training.fit(
        strategy, recipe, data, validation, vocabulary.tokens, features_dir, model_dir, params, on_epoch
    )

"""The classifier's demo data: one shape whose motion is the class, over a random background with noise, so that no
single frame tells the class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vidops.components.generate import (
    MOTIONS,
    SHAPES,
    background,
    contrasting_colour,
    frames_and_samples,
    moving_shape,
)
from vidops.components.media import write_clip
from vidops.components.params import GenerateParams
from vidops.components.tasks import DemoData


def generate(folder: Path, params: GenerateParams) -> DemoData:
    """`params.clips_per_class` clips of each motion under `folder/<motion>/`."""
    n_frames, n_samples = frames_and_samples(params)
    for label_index, label in enumerate(MOTIONS):
        (folder / label).mkdir()
        for clip_index in range(params.clips_per_class):
            rng = np.random.default_rng([params.seed, label_index, clip_index])
            audio = 0.02 * rng.standard_normal(n_samples)  # drawn first: the seed's stream gives the same clips as ever
            scene = background(rng, params.size)
            colour = contrasting_colour(rng, scene)
            shape = SHAPES[rng.integers(len(SHAPES))]
            frames = moving_shape(label, shape, colour, scene, rng, params.size, n_frames, params.fps)
            write_clip(folder / label / f"{label}_{clip_index:03d}.mp4", frames, params.fps, audio)
    return DemoData(MOTIONS, params.clips_per_class * len(MOTIONS))

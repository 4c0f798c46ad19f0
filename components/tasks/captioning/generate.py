"""The captioner's demo data: one shape of a named colour moving over a grey background, listed by a manifest.csv
(with a held-out test split of whole combinations) and described by a captions.csv in words that `caption_attributes`
reads back."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vidops.components.captions import CAPTION_COLUMNS
from vidops.components.catalog import DATASET_MANIFEST, SOURCE_COLUMNS
from vidops.components.generate import MOTIONS, SHAPES, Look, frames_and_samples, moving_shape
from vidops.components.layout import CAPTIONS_FILE
from vidops.components.media import write_clip
from vidops.components.params import GenerateParams
from vidops.components.tasks import DemoData

# Named colours far apart in RGB and from the grey background (_grey_background), so a small CNN tells them at 48 px
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 185, 60),
    "blue": (45, 90, 235),
    "yellow": (235, 215, 45),
    "white": (245, 245, 245),
}
COLOUR_JITTER = 20  # per channel, either way: a colour is a small range, not one value
# The captions name the shape, so the shapes are larger and near upright (a square turned 45 degrees reads as a diamond)
CAPTIONED_LOOK = Look(scale=1.4, tilt=np.deg2rad(15))
# The captions' words: each attribute's values and the phrases that name them. The one table both for writing captions
# (_captions) and for reading them back (caption_attributes), so the two cannot drift apart.
WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "colour": {name: (name,) for name in COLOURS},
    "shape": {
        "square": ("square", "box"),
        "triangle": ("triangle",),
        "cross": ("cross", "plus sign"),
        "ellipse": ("ellipse", "oval"),
    },
    "motion": {
        "move_left": ("moves to the left", "slides left", "goes to the left", "is moving leftwards"),
        "move_right": ("moves to the right", "slides right", "goes to the right", "is moving rightwards"),
        "move_up": ("moves up", "rises", "goes up", "is moving upwards"),
        "move_down": ("moves down", "falls", "goes down", "is moving downwards"),
        "rotate": ("rotates", "spins", "turns around", "is rotating"),
        "zoom_in": ("grows", "gets bigger", "zooms in", "is growing"),
        "zoom_out": ("shrinks", "gets smaller", "zooms out", "is shrinking"),
    },
}
TEMPLATES = ("a {colour} {shape} {motion}", "the {colour} {shape} {motion}")
CAPTIONS_PER_CLIP = (2, 4)  # fewest and most, each clip's number drawn between
HELD_OUT_COMBINATIONS = 0.1  # of the (shape, colour, motion) combinations with clips: all their clips are test clips
# the seed sequence [seed, _PLAN_STREAM] chooses the combinations; a clip's own is [seed, label, clip]
_PLAN_STREAM = 7919


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _naming_words() -> dict[str, tuple[str, str]]:
    """Each word that names one value of one attribute alone ("left", "oval": ("motion", "move_left"), ("shape",
    "ellipse")); words that several values share ("moves", "gets") name none."""
    names: dict[str, set[tuple[str, str]]] = {}
    for attribute, values in WORDS.items():
        for value, phrases in values.items():
            for word in _words(" ".join(phrases)):
                names.setdefault(word, set()).add((attribute, value))
    return {word: named.pop() for word, named in names.items() if len(named) == 1}


_NAMING_WORDS = _naming_words()
# every word a generated caption can hold
VOCABULARY = tuple(
    sorted(
        {
            *_words(" ".join(TEMPLATES).format(colour="", shape="", motion="")),
            *(word for values in WORDS.values() for phrases in values.values() for word in _words(" ".join(phrases))),
        }
    )
)


def caption_attributes(caption: str) -> dict[str, str]:
    """The attributes a caption names, by their canonical values: {"shape": "square", "colour": "red", "motion":
    "move_left"} for "the red box slides left". An attribute it does not name, or names two values of, is left out."""
    found: dict[str, set[str]] = {}
    for word in _words(caption):
        if word in _NAMING_WORDS:
            attribute, value = _NAMING_WORDS[word]
            found.setdefault(attribute, set()).add(value)
    return {attribute: values.pop() for attribute, values in found.items() if len(values) == 1}


@dataclass(frozen=True)
class CaptionedClip:
    """One clip of the captioning data: where it goes, what it shows, its split in the manifest ("": the validate
    stage's hash split decides)."""

    label: str  # its motion
    index: int
    shape: str
    colour: str
    split: str

    @property
    def path(self) -> str:
        return f"{self.label}/{self.label}_{self.index:03d}.mp4"

    @property
    def combination(self) -> tuple[str, str, str]:
        return self.shape, self.colour, self.label


def generate(folder: Path, params: GenerateParams) -> DemoData:
    """The clips under `folder/<motion>/`, the manifest.csv that lists them with their splits, and their
    captions.csv."""
    manifest, captions = [], []
    n_frames, n_samples = frames_and_samples(params)
    for label in MOTIONS:
        (folder / label).mkdir()
    plan = captioned_plan(params)
    for clip in plan:
        rng = np.random.default_rng([params.seed, MOTIONS.index(clip.label), clip.index])
        captions += [{"path": clip.path, "caption": caption} for caption in _captions(clip, rng)]
        frames = _render(clip, rng, params.size, n_frames, params.fps)
        write_clip(folder / clip.path, frames, params.fps, 0.02 * rng.standard_normal(n_samples))
        # each clip its own group: the hash split holds clips out one by one, the held-out combinations are whole
        # already
        manifest.append(
            {"path": clip.path, "label": clip.label, "group": clip.path.removesuffix(".mp4"), "split": clip.split}
        )
    pd.DataFrame(manifest, columns=list(SOURCE_COLUMNS)).to_csv(folder / DATASET_MANIFEST, index=False)
    pd.DataFrame(captions, columns=list(CAPTION_COLUMNS)).to_csv(folder / CAPTIONS_FILE, index=False)
    return DemoData(MOTIONS, len(plan))


def captioned_plan(params: GenerateParams) -> list[CaptionedClip]:
    """Every clip of the captioning data: `params.clips_per_class` per motion, spread round-robin over that motion's
    (shape, colour) combinations in a seeded order, each with its split.

    About HELD_OUT_COMBINATIONS of the combinations that have clips are held out whole (split test), taken from the
    motions in turn, and never one that would leave a shape, colour or motion without a training clip.
    """
    rng = np.random.default_rng([params.seed, _PLAN_STREAM])
    looks = list(itertools.product(SHAPES, COLOURS))
    clips, candidates = [], []
    for label in MOTIONS:
        order = [looks[i] for i in rng.permutation(len(looks))]
        clips += [CaptionedClip(label, i, *order[i % len(order)], split="") for i in range(params.clips_per_class)]
        used = order[: params.clips_per_class]
        candidates.append([(*used[i], label) for i in rng.permutation(len(used))])
    per_combination: dict[tuple[str, str, str], int] = {}
    for clip in clips:
        per_combination[clip.combination] = per_combination.get(clip.combination, 0) + 1
    in_train: dict[str, int] = {}  # clips per attribute value (a value is one word: shapes, colours and motions differ)
    for combination, n in per_combination.items():
        for value in combination:
            in_train[value] = in_train.get(value, 0) + n
    held: set[tuple[str, str, str]] = set()
    wanted = round(HELD_OUT_COMBINATIONS * len(per_combination))
    for combination in (c for turn in itertools.zip_longest(*candidates) for c in turn if c is not None):
        if len(held) == wanted:
            break
        n = per_combination[combination]
        if all(in_train[value] > n for value in combination):
            held.add(combination)
            for value in combination:
                in_train[value] -= n
    return [CaptionedClip(c.label, c.index, c.shape, c.colour, "test" if c.combination in held else "") for c in clips]


def _captions(clip: CaptionedClip, rng: np.random.Generator) -> list[str]:
    """CAPTIONS_PER_CLIP distinct wordings of what the clip shows, drawn from TEMPLATES and WORDS' synonyms."""
    wordings = [
        template.format(colour=colour, shape=shape, motion=motion)
        for template in TEMPLATES
        for colour in WORDS["colour"][clip.colour]
        for shape in WORDS["shape"][clip.shape]
        for motion in WORDS["motion"][clip.label]
    ]
    n = min(int(rng.integers(CAPTIONS_PER_CLIP[0], CAPTIONS_PER_CLIP[1] + 1)), len(wordings))
    return [wordings[i] for i in rng.choice(len(wordings), n, replace=False)]


def _render(clip: CaptionedClip, rng: np.random.Generator, size: int, n_frames: int, fps: int) -> Iterator[np.ndarray]:
    scene = _grey_background(rng, size)
    colour = np.clip(np.array(COLOURS[clip.colour]) + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3), 0, 255)
    return moving_shape(clip.label, clip.shape, colour, scene, rng, size, n_frames, fps, CAPTIONED_LOOK)


def _grey_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dark to mid grey with a linear gradient in a random direction, float [H, W, 3]: no hue to mistake for a
    colour's."""
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) * rng.uniform(-40, 40)
    return np.repeat(np.clip(rng.uniform(40, 110) + ramp, 0, 255)[..., None], 3, axis=2)

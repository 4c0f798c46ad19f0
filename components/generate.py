"""Demo data: real H.264 + AAC MP4 clips, deterministic by seed.

Classification clips show one shape whose motion is the class, over a random background
with noise, so that no single frame tells the class. Sync clips show a mouth-like ellipse
whose opening follows a speech-like envelope that also drives the audio's loudness.
Captioning clips show one shape of a named colour moving over a grey background, listed by a
manifest.csv (with a held-out test split of whole combinations) and described by a captions.csv
in words that `caption_attributes` reads back.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vidops.components.catalog import CAPTION_COLUMNS, DATASET_MANIFEST, SOURCE_COLUMNS
from vidops.components.errors import VidopsError
from vidops.components.layout import CAPTIONS_FILE
from vidops.components.media import AUDIO_RATE, write_clip
from vidops.components.params import GenerateParams

MOTIONS = ("move_left", "move_right", "move_up", "move_down", "rotate", "zoom_in", "zoom_out")
SYNC_LABEL = "talking"
SHAPES = ("square", "triangle", "cross", "ellipse")  # none looks the same after a small rotation
MARKER = "generator.json"


@dataclass(frozen=True)
class DataKind:
    """A kind of demo data: its labels (the clips' folders), and whether a manifest and captions describe its clips."""

    labels: tuple[str, ...]
    captioned: bool = False


KINDS = {  # the data kinds, by the task spec that trains on them
    "classification": DataKind(MOTIONS),
    "sync": DataKind((SYNC_LABEL,)),
    "captioning": DataKind(MOTIONS, captioned=True),
}
# Named colours far apart in RGB and from the grey background (_grey_background), so a small CNN tells them at 48 px
COLOURS = {"red": (215, 40, 40), "green": (40, 185, 60), "blue": (45, 90, 235), "yellow": (235, 215, 45), "white": (245, 245, 245)}
COLOUR_JITTER = 20  # per channel, either way: a colour is a small range, not one value


@dataclass(frozen=True)
class Look:
    """How a moving shape is drawn: `scale` times the classification data's radii, turned up to `tilt` radians either way
    at the start (None: any way)."""

    scale: float = 1.0
    tilt: float | None = None


# Captioning names the shape, so its shapes are larger and near upright (a square turned 45 degrees reads as a diamond)
CAPTIONED_LOOK = Look(scale=1.4, tilt=np.deg2rad(15))
# The captions' words: each attribute's values and the phrases that name them. The one table both for writing captions
# (_captions) and for reading them back (caption_attributes), so the two cannot drift apart.
WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "colour": {name: (name,) for name in COLOURS},
    "shape": {"square": ("square", "box"), "triangle": ("triangle",), "cross": ("cross", "plus sign"), "ellipse": ("ellipse", "oval")},
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
_PLAN_STREAM = 7919  # the seed sequence [seed, _PLAN_STREAM] chooses the combinations; a clip's own is [seed, label, clip]


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
VOCABULARY = tuple(sorted({*_words(" ".join(TEMPLATES).format(colour="", shape="", motion="")), *(
    word for values in WORDS.values() for phrases in values.values() for word in _words(" ".join(phrases)))}))  # fmt: skip


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
    """One clip of the captioning data: where it goes, what it shows, its split in the manifest ("" : the validate
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


@dataclass(frozen=True)
class GeneratedDataset:
    root: Path
    labels: tuple[str, ...]
    clips: int


def generate_dataset(out_dir: Path, kind: str, params: GenerateParams) -> GeneratedDataset:
    """Write `params.clips_per_class` clips per label of the data `kind` (`KINDS`) under `out_dir/<label>/`, and for a
    captioned kind the manifest.csv that lists them with their splits and their captions.csv; refuse a non-empty `out_dir`.

    Clips are written into a hidden sibling folder that is renamed into place only when all
    are done, so an interrupted run never leaves a folder that looks complete.
    """
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise VidopsError(f"{out_dir}: exists and is not an empty folder; generate writes only into a new or empty one")
    labels = KINDS[kind].labels
    partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    try:
        partial.mkdir(parents=True)
    except OSError as exc:
        raise VidopsError(f"{out_dir.parent}: cannot write there: {exc.strerror}") from None
    try:
        for label in labels:
            (partial / label).mkdir()
        if KINDS[kind].captioned:
            _write_captioned(partial, params)
        else:
            for label_index, label in enumerate(labels):
                for clip_index in range(params.clips_per_class):
                    rng = np.random.default_rng([params.seed, label_index, clip_index])
                    frames, audio = _render(label, rng, params)
                    write_clip(partial / label / f"{label}_{clip_index:03d}.mp4", frames, params.fps, audio)
        marker = {"task": kind, "labels": list(labels), **params.model_dump(mode="json")}
        (partial / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()
        partial.rename(out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return GeneratedDataset(out_dir, labels, params.clips_per_class * len(labels))


def _render(label: str, rng: np.random.Generator, p: GenerateParams) -> tuple[Iterator[np.ndarray], np.ndarray]:
    n_frames = round(p.duration_s * p.fps)
    n_samples = round(p.duration_s * AUDIO_RATE)
    if label == SYNC_LABEL:
        return _render_talking(rng, p.size, n_frames, p.fps, n_samples)
    noise_audio = 0.02 * rng.standard_normal(n_samples)
    return _render_motion(label, rng, p.size, n_frames, p.fps), noise_audio


def captioned_plan(params: GenerateParams) -> list[CaptionedClip]:
    """Every clip of the captioning data: `params.clips_per_class` per motion, spread round-robin over that motion's
    (shape, colour) combinations in a seeded order, each with its split.

    About HELD_OUT_COMBINATIONS of the combinations that have clips are held out whole (split test), taken from the motions
    in turn, and never one that would leave a shape, colour or motion without a training clip.
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


def _write_captioned(root: Path, params: GenerateParams) -> None:
    """The captioning clips under `root`/<motion>/, the manifest.csv that lists them with their splits, and their captions."""
    manifest, captions = [], []
    n_frames, n_samples = round(params.duration_s * params.fps), round(params.duration_s * AUDIO_RATE)
    for clip in captioned_plan(params):
        rng = np.random.default_rng([params.seed, MOTIONS.index(clip.label), clip.index])
        captions += [{"path": clip.path, "caption": caption} for caption in _captions(clip, rng)]
        frames = _render_captioned(clip, rng, params.size, n_frames, params.fps)
        write_clip(root / clip.path, frames, params.fps, 0.02 * rng.standard_normal(n_samples))
        # each clip its own group: the hash split holds clips out one by one, the held-out combinations are whole already
        manifest.append({"path": clip.path, "label": clip.label, "group": clip.path.removesuffix(".mp4"), "split": clip.split})
    pd.DataFrame(manifest, columns=list(SOURCE_COLUMNS)).to_csv(root / DATASET_MANIFEST, index=False)
    pd.DataFrame(captions, columns=list(CAPTION_COLUMNS)).to_csv(root / CAPTIONS_FILE, index=False)


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


def _render_captioned(clip: CaptionedClip, rng: np.random.Generator, size: int, n_frames: int, fps: int) -> Iterator[np.ndarray]:
    background = _grey_background(rng, size)
    colour = np.clip(np.array(COLOURS[clip.colour]) + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3), 0, 255)
    return _moving_shape(clip.label, clip.shape, colour, background, rng, size, n_frames, fps, CAPTIONED_LOOK)


def _grey_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dark to mid grey with a linear gradient in a random direction, float [H, W, 3]: no hue to mistake for a colour's."""
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy) * rng.uniform(-40, 40)
    return np.repeat(np.clip(rng.uniform(40, 110) + ramp, 0, 255)[..., None], 3, axis=2)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random colour with a linear gradient in a random direction, float [H, W, 3]."""
    base = rng.uniform(30, 225, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    return np.clip(base + ramp * rng.uniform(-60, 60, 3), 0, 255)


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    mean = background.reshape(-1, 3).mean(axis=0)
    while True:
        colour = rng.uniform(0, 255, 3)
        if np.abs(colour - mean).sum() > 150:
            return colour


def _shape_mask(shape: str, size: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * radius
    if shape == "triangle":
        return (v <= radius / 2) & (v >= -radius + np.sqrt(3) * np.abs(u))
    if shape == "cross":
        thin = radius / 3
        return ((np.abs(u) <= radius) & (np.abs(v) <= thin)) | ((np.abs(v) <= radius) & (np.abs(u) <= thin))
    return (u / radius) ** 2 + (v / (0.5 * radius)) ** 2 <= 1


def _motion_path(label: str, rng: np.random.Generator, size: int, t: np.ndarray, look: Look = Look()) -> tuple[np.ndarray, ...]:
    """Centre x, centre y, radius and angle of the shape at times `t` for one motion class."""
    duration = float(t[-1]) if len(t) > 1 else 1.0
    radius0 = rng.uniform(0.1, 0.18) * size * look.scale
    angle0 = rng.uniform(0, 2 * np.pi) if look.tilt is None else rng.uniform(-look.tilt, look.tilt)
    cx0, cy0 = rng.uniform(radius0, size - radius0, 2)
    still = np.ones_like(t)
    cx, cy, radius, angle = cx0 * still, cy0 * still, radius0 * still, angle0 * still
    if label.startswith("move_"):
        travel = rng.uniform(0.35, 0.65) * size
        start = rng.uniform(radius0, max(radius0, size - radius0 - travel))
        path = start + travel * t / duration
        if label in ("move_left", "move_up"):
            path = size - path
        if label in ("move_left", "move_right"):
            cx = path
        else:
            cy = path
    elif label == "rotate":
        spin = np.deg2rad(rng.uniform(90, 200)) * rng.choice([-1, 1])
        angle = angle0 + spin * t
    elif label in ("zoom_in", "zoom_out"):
        growth = rng.uniform(1.8, 2.6) ** (t / duration)
        small = rng.uniform(0.06, 0.1) * size * look.scale
        radius = small * growth if label == "zoom_in" else small * growth[::-1]
    return cx, cy, radius, angle


def _render_motion(label: str, rng: np.random.Generator, size: int, n_frames: int, fps: int) -> Iterator[np.ndarray]:
    background = _background(rng, size)
    colour = _contrasting_colour(rng, background)
    shape = SHAPES[rng.integers(len(SHAPES))]
    return _moving_shape(label, shape, colour, background, rng, size, n_frames, fps)


def _moving_shape(
    label: str, shape: str, colour: np.ndarray, background: np.ndarray, rng: np.random.Generator, size: int, n_frames: int, fps: int,
    look: Look = Look(),
) -> Iterator[np.ndarray]:
    """The frames of `shape` in `colour` moving as the motion `label` says over `background`, with noise."""
    noise = rng.uniform(3, 10)
    t = np.arange(n_frames) / fps
    cx, cy, radius, angle = _motion_path(label, rng, size, t, look)
    for i in range(n_frames):
        frame = background.copy()
        frame[_shape_mask(shape, size, cx[i], cy[i], radius[i], angle[i])] = colour
        frame += rng.normal(0, noise, frame.shape)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def speech_envelope(rng: np.random.Generator, duration_s: float) -> Callable[[np.ndarray], np.ndarray]:
    """A syllable-like loudness envelope in [0, 1]: Hann bumps of 0.1-0.3 s at about 4 per second, with pauses."""
    bumps: list[tuple[float, float, float]] = []
    t = rng.uniform(0, 0.2)
    while t < duration_s:
        length = rng.uniform(0.1, 0.3)
        bumps.append((t, length, rng.uniform(0.5, 1.0)))
        t += length + (rng.uniform(0.3, 0.7) if rng.random() < 0.15 else rng.uniform(0.0, 0.08))

    def envelope(times: np.ndarray) -> np.ndarray:
        out = np.zeros_like(times, dtype=np.float64)
        for start, length, height in bumps:
            phase = (times - start) / length
            inside = (phase >= 0) & (phase <= 1)
            out[inside] = np.maximum(out[inside], height * np.sin(np.pi * phase[inside]) ** 2)
        return out

    return envelope


def _render_talking(rng: np.random.Generator, size: int, n_frames: int, fps: int, n_samples: int) -> tuple[Iterator[np.ndarray], np.ndarray]:
    envelope = speech_envelope(rng, n_samples / AUDIO_RATE)
    audio_t = np.arange(n_samples) / AUDIO_RATE
    pitch = rng.uniform(100, 220)
    voice = sum(np.sin(2 * np.pi * pitch * k * audio_t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 6))
    audio = 0.5 * envelope(audio_t) * voice / 2.3 + 0.01 * rng.standard_normal(n_samples)
    opening = envelope(np.arange(n_frames) / fps)

    skin = rng.uniform([150, 90, 60], [240, 190, 160])
    lips = rng.uniform([90, 20, 30], [170, 70, 80])
    width = rng.uniform(0.18, 0.26) * size
    cx, cy = size / 2 + rng.uniform(-0.05, 0.05, 2) * size + [0, 0.12 * size]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    def frames() -> Iterator[np.ndarray]:
        for i in range(n_frames):
            frame = np.broadcast_to(skin, (size, size, 3)).copy()
            height = 0.03 * size + 0.12 * size * opening[i]
            frame[((xx - cx) / width) ** 2 + ((yy - cy) / height) ** 2 <= 1] = lips
            inner = ((xx - cx) / (0.8 * width)) ** 2 + ((yy - cy) / max(height - 0.03 * size, 0.5)) ** 2 <= 1
            frame[inner] = (20, 5, 10)
            frame += rng.normal(0, 3, frame.shape)
            yield np.clip(frame, 0, 255).astype(np.uint8)

    return frames(), audio

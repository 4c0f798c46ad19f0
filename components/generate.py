"""Demo data: real H.264 + AAC MP4 clips, deterministic by seed, written by each task's `generate` into a new folder.

What differs between tasks (the classes, the sound, captions) is the task's own (`components/tasks/<task>/generate.py`);
this module writes a dataset whole or not at all, and draws what several tasks' clips share: a shape that moves, grows
or turns over a background, with noise.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidops.components.errors import VidopsError
from vidops.components.params import GenerateParams, Task

MOTIONS = ("move_left", "move_right", "move_up", "move_down", "rotate", "zoom_in", "zoom_out")
SHAPES = ("square", "triangle", "cross", "ellipse")  # none looks the same after a small rotation
MARKER = "generator.json"  # at a generated dataset's top: the task and the params it was made with


@dataclass(frozen=True)
class GeneratedDataset:
    root: Path
    labels: tuple[str, ...]
    clips: int


def generate_dataset(out_dir: Path, task: Task, params: GenerateParams) -> GeneratedDataset:
    """Write the demo data of `task` (its spec's `generate`) into `out_dir`; refuse a non-empty `out_dir`.

    The clips go into a hidden sibling folder that is renamed into place only when all are done, so an interrupted
    run never leaves a folder that looks complete.
    """
    from vidops.components.tasks import spec  # the tasks import this module's drawing

    write = spec(task).generate
    if write is None:
        raise VidopsError(
            f"task {task} has no demo data; put its dataset in data/raw/<name>/ and name it in datasets.{task}"
        )
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise VidopsError(f"{out_dir}: exists and is not an empty folder; generate writes only into a new or empty one")
    partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    try:
        partial.mkdir(parents=True)
    except OSError as exc:
        raise VidopsError(f"{out_dir.parent}: cannot write there: {exc.strerror}") from None
    try:
        made = write(partial, params)
        marker = {"task": task, "labels": list(made.labels), **params.model_dump(mode="json")}
        (partial / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if out_dir.exists():
            out_dir.rmdir()
        partial.rename(out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return GeneratedDataset(out_dir, made.labels, made.clips)


def frames_and_samples(params: GenerateParams) -> tuple[int, int]:
    """A clip's number of video frames and of audio samples at the media's audio rate."""
    from vidops.components.media import AUDIO_RATE

    return round(params.duration_s * params.fps), round(params.duration_s * AUDIO_RATE)


@dataclass(frozen=True)
class Look:
    """How a moving shape is drawn: `scale` times the default radii, turned up to `tilt` radians either way at the
    start (None: any way)."""

    scale: float = 1.0
    tilt: float | None = None


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random colour with a linear gradient in a random direction, float [H, W, 3]."""
    base = rng.uniform(30, 225, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    return np.clip(base + ramp * rng.uniform(-60, 60, 3), 0, 255)


def contrasting_colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    mean = background.reshape(-1, 3).mean(axis=0)
    while True:
        colour = rng.uniform(0, 255, 3)
        if np.abs(colour - mean).sum() > 150:
            return colour


def shape_mask(shape: str, size: int, cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
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


def motion_path(
    label: str, rng: np.random.Generator, size: int, t: np.ndarray, look: Look = Look()
) -> tuple[np.ndarray, ...]:
    """Centre x, centre y, radius and angle of the shape at times `t` for one of MOTIONS."""
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


def moving_shape(
    label: str,
    shape: str,
    colour: np.ndarray,
    background: np.ndarray,
    rng: np.random.Generator,
    size: int,
    n_frames: int,
    fps: int,
    look: Look = Look(),
) -> Iterator[np.ndarray]:
    """The frames of `shape` in `colour` moving as the motion `label` says over `background`, with noise."""
    noise = rng.uniform(3, 10)
    t = np.arange(n_frames) / fps
    cx, cy, radius, angle = motion_path(label, rng, size, t, look)
    for i in range(n_frames):
        frame = background.copy()
        frame[shape_mask(shape, size, cx[i], cy[i], radius[i], angle[i])] = colour
        frame += rng.normal(0, noise, frame.shape)
        yield np.clip(frame, 0, 255).astype(np.uint8)

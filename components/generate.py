"""Demo data: real H.264 + AAC MP4 clips, deterministic by seed.

Classification clips show one shape whose motion is the class, over a random background
with noise, so that no single frame tells the class. Sync clips show a mouth-like ellipse
whose opening follows a speech-like envelope that also drives the audio's loudness.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidops.components.errors import VidopsError
from vidops.components.media import AUDIO_RATE, write_clip
from vidops.components.params import GenerateParams

MOTIONS = ("move_left", "move_right", "move_up", "move_down", "rotate", "zoom_in", "zoom_out")
SYNC_LABEL = "talking"
KINDS = {"classification": MOTIONS, "sync": (SYNC_LABEL,)}  # the data kinds, by the task spec that trains on them: their labels
SHAPES = ("square", "triangle", "cross", "ellipse")  # none looks the same after a small rotation
MARKER = "generator.json"


@dataclass(frozen=True)
class GeneratedDataset:
    root: Path
    labels: tuple[str, ...]
    clips: int


def generate_dataset(out_dir: Path, kind: str, params: GenerateParams) -> GeneratedDataset:
    """Write `params.clips_per_class` clips per label of the data `kind` (`KINDS`) under `out_dir/<label>/`; refuse a
    non-empty `out_dir`.

    Clips are written into a hidden sibling folder that is renamed into place only when all
    are done, so an interrupted run never leaves a folder that looks complete.
    """
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise VidopsError(f"{out_dir}: exists and is not an empty folder; generate writes only into a new or empty one")
    labels = KINDS[kind]
    partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    try:
        partial.mkdir(parents=True)
    except OSError as exc:
        raise VidopsError(f"{out_dir.parent}: cannot write there: {exc.strerror}") from None
    try:
        for label_index, label in enumerate(labels):
            (partial / label).mkdir()
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


def _motion_path(label: str, rng: np.random.Generator, size: int, t: np.ndarray) -> tuple[np.ndarray, ...]:
    """Centre x, centre y, radius and angle of the shape at times `t` for one motion class."""
    duration = float(t[-1]) if len(t) > 1 else 1.0
    radius0 = rng.uniform(0.1, 0.18) * size
    angle0 = rng.uniform(0, 2 * np.pi)
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
        small = rng.uniform(0.06, 0.1) * size
        radius = small * growth if label == "zoom_in" else small * growth[::-1]
    return cx, cy, radius, angle


def _render_motion(label: str, rng: np.random.Generator, size: int, n_frames: int, fps: int) -> Iterator[np.ndarray]:
    background = _background(rng, size)
    colour = _contrasting_colour(rng, background)
    shape = SHAPES[rng.integers(len(SHAPES))]
    noise = rng.uniform(3, 10)
    t = np.arange(n_frames) / fps
    cx, cy, radius, angle = _motion_path(label, rng, size, t)
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

"""The sync model's demo data: a mouth-like ellipse whose opening follows a speech-like envelope that also drives the
loudness of the clip's voice."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from vidops.components.generate import frames_and_samples
from vidops.components.media import AUDIO_RATE, write_clip
from vidops.components.params import GenerateParams
from vidops.components.tasks import DemoData

LABEL = "talking"  # the one class: the model learns from the sound, not from labels


def generate(folder: Path, params: GenerateParams) -> DemoData:
    """`params.clips_per_class` talking clips with sound under `folder/talking/`."""
    n_frames, n_samples = frames_and_samples(params)
    (folder / LABEL).mkdir()
    for clip_index in range(params.clips_per_class):
        rng = np.random.default_rng([params.seed, 0, clip_index])
        frames, audio = talking(rng, params.size, n_frames, params.fps, n_samples)
        write_clip(folder / LABEL / f"{LABEL}_{clip_index:03d}.mp4", frames, params.fps, audio)
    return DemoData((LABEL,), params.clips_per_class)


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


def talking(
    rng: np.random.Generator, size: int, n_frames: int, fps: int, n_samples: int
) -> tuple[Iterator[np.ndarray], np.ndarray]:
    """A talking mouth's frames and its voice, both following one speech envelope."""
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

"""Real encoded clips, good and defective, written in the tests with PyAV (no fixtures are downloaded)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vidops.components.media import AUDIO_RATE, mux_audio


def encode(
    path: Path,
    codec: str = "libx264",
    container: str | None = None,
    pix_fmt: str = "yuv420p",
    size: tuple[int, int] = (64, 48),
    frames: int = 25,
    fps: int = 25,
    seed: int = 0,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    rotation: int = 0,
    frame_times_ms: list[int] | None = None,
    audio_s: float | None = None,
    images: list[np.ndarray] | None = None,
) -> Path:
    """Write `frames` frames of seeded noise (distinct per seed, so no two clips look alike)."""
    rng = np.random.default_rng(seed)
    width, height = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container, options=container_options or {}) as out:
        video = out.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.options = options or {}
        if frame_times_ms is not None:
            video.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            video.set_display_rotation(rotation)
        sound = out.add_stream("aac", rate=AUDIO_RATE, layout="mono") if audio_s else None
        base = rng.integers(0, 255, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
        for i in range(frames):
            image = (
                images[i]
                if images is not None
                else np.roll(np.kron(base, np.ones((4, 4, 1), np.uint8))[:height, :width], i, axis=1)
            )
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            if frame_times_ms is not None:
                frame.pts, frame.time_base = frame_times_ms[i], Fraction(1, 1000)
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if sound is not None:
            mux_audio(out, sound, 0.1 * rng.standard_normal(int(AUDIO_RATE * audio_s)))
    return path


def audio_only(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as out:
        mux_audio(out, out.add_stream("aac", rate=AUDIO_RATE, layout="mono"), np.zeros(AUDIO_RATE))
    return path


def truncated(source: Path, path: Path, keep: float) -> Path:
    """The first `keep` fraction of `source`'s bytes."""
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


BITS = 8  # frame indices up to 255


def index_image(index: int, width: int = 64, height: int = 48) -> np.ndarray:
    """A frame that shows its own index: BITS vertical bands, white for a 1 bit, black for a 0."""
    bits = [(index >> b) & 1 for b in range(BITS)]
    row = np.repeat(np.array(bits, np.uint8) * 255, width // BITS)
    return np.ascontiguousarray(np.broadcast_to(row[None, :, None], (height, width, 3)))


def read_index(image: np.ndarray) -> int:
    """The index an `index_image` shows, from any resized copy of it."""
    height, width = image.shape[:2]
    centres = ((np.arange(BITS) + 0.5) * width / BITS).astype(int)
    bits = image[height // 2, centres].mean(axis=1) > 127
    return int(sum(int(bit) << b for b, bit in enumerate(bits)))


def encode_indexed(path: Path, frames: int, **kwargs: object) -> Path:
    """Like `encode`, but each frame shows its own index."""
    return encode(path, frames=frames, images=[index_image(i) for i in range(frames)], **kwargs)


def encode_flash_and_click(path: Path, flash: int, audio_delay_frames: int = 0, frames: int = 50) -> Path:
    """Black frames but a white one at `flash`, silence but a click at the same instant of the audio's own clock,
    with the audio stream starting `audio_delay_frames` frames late in the container."""
    width, height, fps = 64, 48, 25
    samples = np.zeros(AUDIO_RATE * frames // fps, np.float32)
    at = flash * AUDIO_RATE // fps
    samples[at : at + AUDIO_RATE // 100] = np.random.default_rng(0).uniform(-0.9, 0.9, AUDIO_RATE // 100)
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        sound = out.add_stream("aac", rate=AUDIO_RATE, layout="mono")
        for i in range(frames):
            out.mux(
                video.encode(
                    av.VideoFrame.from_ndarray(
                        np.full((height, width, 3), 255 * (i == flash), np.uint8), format="rgb24"
                    )
                )
            )
        out.mux(video.encode())
        mux_audio(out, sound, samples, first_sample=audio_delay_frames * AUDIO_RATE // fps)
    return path

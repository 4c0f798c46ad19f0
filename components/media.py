"""PyAV helpers shared by the stages: writing and reading encoded clips."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np

AUDIO_RATE = 16_000  # Hz, mono: the sync model's audio rate (DESIGN.md, "The models")
_AAC_FRAME = 1024  # samples per AAC frame


def write_clip(path: Path, frames: Iterable[np.ndarray], fps: int, audio: np.ndarray | None) -> None:
    """Encode RGB uint8 frames [H, W, 3] as H.264 and float audio in [-1, 1] at 16 kHz as AAC into an MP4."""
    with av.open(str(path), "w", format="mp4") as container:
        video = None
        sound = container.add_stream("aac", rate=AUDIO_RATE, layout="mono") if audio is not None else None
        for frame in frames:
            if video is None:
                video = container.add_stream("libx264", rate=fps)
                video.height, video.width = frame.shape[:2]
                video.pix_fmt = "yuv420p"
                # one thread: x264's output then depends on the input alone, so a seed fixes the bytes
                video.options = {"preset": "veryfast", "crf": "20", "threads": "1"}
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        if video is None:
            raise ValueError(f"{path}: no frames to write")
        container.mux(video.encode())
        if sound is not None:
            mux_audio(container, sound, audio)


def mux_audio(container: av.container.OutputContainer, stream: av.audio.stream.AudioStream, audio: np.ndarray) -> None:
    """Encode mono float audio in [-1, 1] at 16 kHz into `stream`, then flush it."""
    samples = np.clip(audio, -1.0, 1.0).astype(np.float32)
    for start in range(0, len(samples), _AAC_FRAME):
        chunk = av.AudioFrame.from_ndarray(samples[None, start : start + _AAC_FRAME], format="fltp", layout="mono")
        chunk.sample_rate = AUDIO_RATE
        chunk.pts = start
        container.mux(stream.encode(chunk))
    container.mux(stream.encode())


def read_frames(path: Path, indices: np.ndarray, size: int) -> np.ndarray:
    """Decode the frames at sorted `indices` (0-based, in decode order), squashed to uint8 [N, size, size, 3]."""
    wanted = {int(i): slot for slot, i in enumerate(indices)}
    out = np.empty((len(indices), size, size, 3), dtype=np.uint8)
    found = 0
    last = int(indices.max())
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for position, frame in enumerate(container.decode(stream)):
            if position in wanted:
                out[wanted[position]] = frame.to_ndarray(format="rgb24", width=size, height=size)
                found += 1
            if position >= last:
                break
    if found < len(wanted):
        raise ValueError(f"{path}: decoded {found} of {len(wanted)} wanted frames (up to index {last}); the file is shorter than it says")
    return out

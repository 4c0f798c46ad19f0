"""Audio features aligned to video frames: 16 kHz mono, log-mel (40) or MFCC (13) at 100 steps a second."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from vidops.components.media import AUDIO_RATE

STEP_RATE = 100  # feature steps per second
STEPS_PER_FRAME = 4  # at 25 fps (DESIGN.md, "The models")
_HOP, _WINDOW, _FFT = AUDIO_RATE // STEP_RATE, 400, 512  # 10 ms hop, 25 ms window
N_MELS, N_MFCC = 40, 13


def decode_audio(path: Path) -> tuple[np.ndarray, float] | None:
    """The first audio stream as 16 kHz mono float32, and the time of its first sample in seconds; None without audio.

    The start time is the first decoded frame's, which counts the stream's start offset and
    edit list, so audio delayed in the container stays delayed here.
    """
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        start, chunks = None, []
        for frame in container.decode(audio=0):
            if start is None and frame.time is not None:
                start = float(frame.time)
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return (samples, start or 0.0) if len(samples) else None


def features(samples: np.ndarray, kind: str) -> np.ndarray:
    """[steps, 40] log-mel or [steps, 13] MFCC; step t is centred on sample 160 t, that is on t / 100 s."""
    padded = np.pad(samples, (_WINDOW // 2, _WINDOW // 2))
    steps = 1 + (len(padded) - _WINDOW) // _HOP
    windows = np.lib.stride_tricks.sliding_window_view(padded, _WINDOW)[:: _HOP][:steps] * np.hanning(_WINDOW)
    power = np.abs(np.fft.rfft(windows, _FFT)) ** 2
    log_mel = np.log(power @ _MEL.T + 1e-6).astype(np.float32)
    return log_mel if kind == "logmel" else (log_mel @ _DCT.T).astype(np.float32)


def align(steps: np.ndarray, audio_start: float, frame_times: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The STEPS_PER_FRAME steps from each frame's time on, [N, 4, F], and which frames had audio for all 4.

    Times are the streams' own (first decoded frame, start offsets and edit lists counted);
    steps before the audio starts or after it ends read as silence.
    """
    first = np.round((frame_times - audio_start) * STEP_RATE).astype(np.int64)
    index = first[:, None] + np.arange(STEPS_PER_FRAME)
    inside = (index >= 0) & (index < len(steps))
    picked = steps[np.clip(index, 0, max(len(steps) - 1, 0))] if len(steps) else np.zeros((*index.shape, 1), np.float32)
    out = np.where(inside[..., None], picked, silence(kind)).astype(np.float32)
    return out, inside.all(axis=1)


def silence(kind: str) -> np.ndarray:
    """The feature vector of a silent step."""
    return features(np.zeros(_WINDOW, np.float32), kind)[0]


def _mel_filters() -> np.ndarray:
    """HTK mel filterbank, 0 to 8 kHz, [N_MELS, FFT bins]."""
    mel = lambda hz: 2595 * np.log10(1 + hz / 700)  # noqa: E731
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)  # noqa: E731
    edges = hz(np.linspace(mel(0), mel(AUDIO_RATE / 2), N_MELS + 2))
    bins = np.fft.rfftfreq(_FFT, 1 / AUDIO_RATE)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.maximum(0, np.minimum((bins - lower) / (centre - lower), (upper - bins) / (upper - centre)))


def _dct_matrix() -> np.ndarray:
    """Orthonormal DCT-II rows 0..N_MFCC-1 over N_MELS inputs."""
    n = np.arange(N_MELS)
    rows = np.cos(np.pi * np.outer(np.arange(N_MFCC), 2 * n + 1) / (2 * N_MELS)) * np.sqrt(2 / N_MELS)
    rows[0] /= np.sqrt(2)
    return rows


_MEL = _mel_filters()
_DCT = _dct_matrix()

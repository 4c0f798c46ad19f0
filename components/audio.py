"""Audio features aligned to video frames: 16 kHz mono, log-mel (40) or MFCC (13) at 100 steps a second."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from vidops.components.media import AUDIO_RATE, only_stream

if TYPE_CHECKING:
    from threadpoolctl import ThreadpoolController

STEP_RATE = 100  # feature steps per second
STEPS_PER_FRAME = 4  # 100 audio steps a second at 25 video frames a second
_HOP, _WINDOW, _FFT = AUDIO_RATE // STEP_RATE, 400, 512  # 10 ms hop, 25 ms window
N_MELS, N_MFCC = 40, 13
# Codec frames decoded before each stretch and dropped: what the MDCT overlap (AAC, MP3) and MP3's bit reservoir
# need to settle after a seek. Stretches closer than this are decoded as one: a seek costs its preroll anyway.
PREROLL_FRAMES = 2
PREROLL_S = 0.1  # when the codec does not say its frame size


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
    return _window_features(np.lib.stride_tricks.sliding_window_view(padded, _WINDOW)[::_HOP][:steps], kind)


def _window_features(windows: np.ndarray, kind: str) -> np.ndarray:
    """The features of each row of `windows` [K, 400]."""
    power = np.abs(np.fft.rfft(windows * np.hanning(_WINDOW), _FFT)) ** 2
    # one BLAS thread for these small products: OpenBLAS's own threads spin after them, which costs CPU time well
    # beyond the work and slows the other extraction worker (measured: benchmarks/README.md)
    with _blas().limit(limits=1, user_api="blas"):
        log_mel = np.log(power @ _MEL.T + 1e-6).astype(np.float32)
        return log_mel if kind == "logmel" else (log_mel @ _DCT.T).astype(np.float32)


@functools.cache
def _blas() -> ThreadpoolController:
    """threadpoolctl's handle on the BLAS numpy loaded, found once: finding it walks every library the process has
    loaded, a cost that weighs on a clip's extraction when paid at each use (measured: benchmarks/README.md)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@dataclass(frozen=True)
class FrameAudio:
    """Each frame's feature steps [N, 4, F], which frames had audio for all 4, and whether the clip has audio at all."""

    features: np.ndarray
    ok: np.ndarray
    has_audio: bool


def frame_audio(container: Any, frame_times: np.ndarray, kind: str) -> FrameAudio:
    """The STEPS_PER_FRAME steps from each frame's time on, decoding only the audio around the frames.

    The same features as `features` of `decode_audio`'s whole track aligned by `align`, but a clip
    of hours sampled at a few frames decodes, and holds, a few seconds of audio.
    """
    start = _first_frame_time(container, container.streams.audio[0]) if container.streams.audio else None
    if start is None:
        return silent_frames(len(frame_times), kind, has_audio=False)
    stream = container.streams.audio[0]
    index = np.round((frame_times - start) * STEP_RATE).astype(np.int64)[:, None] + np.arange(STEPS_PER_FRAME)
    wanted = np.unique(index[index >= 0])
    frame_size = stream.codec_context.frame_size
    preroll = PREROLL_FRAMES * frame_size / stream.codec_context.sample_rate if frame_size else PREROLL_S
    steps, windows, resampler = [], [], _Resampler()
    with only_stream(container, stream):
        for lo, hi in _stretches(wanted, preroll):
            lo_sample, hi_sample = lo * _HOP - _WINDOW // 2, hi * _HOP + _WINDOW // 2
            samples, offset, at_end = _decode_stretch(
                container, stream, start, lo_sample, hi_sample, preroll, resampler
            )
            these = wanted[(wanted >= lo) & (wanted <= hi)]
            if at_end:  # the steps `features` has for a track of this many samples
                these = these[these <= (offset + len(samples)) // _HOP]
            padded = np.pad(samples, (_WINDOW, _WINDOW))  # zeros past the track's ends, as `features` pads it
            windows.append(
                np.lib.stride_tricks.sliding_window_view(padded, _WINDOW)[
                    these * _HOP - _WINDOW // 2 - offset + _WINDOW
                ]
            )
            steps.append(these)
    centres = np.concatenate(steps) if steps else np.zeros(0, np.int64)
    if not len(centres):  # every frame before the audio starts or after it ends
        return silent_frames(len(frame_times), kind, has_audio=True)
    computed = _window_features(np.concatenate(windows), kind)
    inside = np.isin(index, centres)
    picked = computed[np.searchsorted(centres, index).clip(0, len(centres) - 1)]
    return FrameAudio(np.where(inside[..., None], picked, silence(kind)).astype(np.float32), inside.all(axis=1), True)


def silent_frames(frames: int, kind: str, has_audio: bool) -> FrameAudio:
    """Silence for every frame, none of them flagged as having audio."""
    quiet = silence(kind)
    return FrameAudio(np.tile(quiet, (frames, STEPS_PER_FRAME, 1)), np.zeros(frames, bool), has_audio)


def _stretches(steps: np.ndarray, gap_s: float) -> list[tuple[int, int]]:
    """Sorted step numbers grouped into (first, last) stretches, joining those less than `gap_s` seconds apart."""
    if not len(steps):
        return []
    breaks = np.flatnonzero(np.diff(steps) > gap_s * STEP_RATE + _WINDOW / _HOP)
    # a stretch's first and last: one more than the breaks each
    starts, ends = np.r_[0, breaks + 1], np.r_[breaks, len(steps) - 1]
    return [(int(steps[a]), int(steps[b])) for a, b in zip(starts, ends, strict=True)]


def _first_frame_time(container: Any, stream: Any) -> float | None:
    """The time of the stream's first decoded frame (start offsets and edit lists counted); None when none decodes."""
    _seek(container, stream, None)
    for frame in container.decode(stream):
        if frame.time is not None:
            return float(frame.time)
    return None


def _decode_stretch(
    container: Any,
    stream: Any,
    start: float,
    lo: int,
    hi: int,
    preroll: float,
    resampler: _Resampler,
    from_start: bool = False,
) -> tuple[np.ndarray, int, bool]:
    """16 kHz mono samples covering sample `lo` to `hi` of the track (numbered from its first, at time `start`), decoded
    from `preroll` seconds before: the samples, the number of the first of them, and whether the track ended before
    `hi`."""
    _seek(container, stream, None if from_start else start + lo / AUDIO_RATE - preroll)
    stale = resampler.stale()
    first, chunks, have = None, [], 0
    for frame in container.decode(stream):
        if first is None:
            if frame.time is None:
                continue
            first = round((float(frame.time) - start) * AUDIO_RATE)
            # the seek landed past the stretch: read from the track's start instead
            if first > max(lo, 0) and not from_start:
                return _decode_stretch(container, stream, start, lo, hi, preroll, resampler, from_start=True)
        for out in resampler.push(frame):
            chunks.append(out[stale:])
            stale, have = max(stale - len(out), 0), have + len(chunks[-1])
        if first + have >= hi:
            break
    else:  # the track ended
        for out in resampler.flush():
            chunks.append(out[stale:])
            stale = max(stale - len(out), 0)
    if first is None:  # nothing decodes from here: none of the stretch's steps are in the track
        return np.zeros(0, np.float32), max(lo, 0), True
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if first < 0:  # decoded before the track's first sample (priming): `features` has zeros there
        samples, first = samples[-first:], 0
    return samples, first, first + len(samples) < hi


class _Resampler:
    """16 kHz mono float32 from decoded frames: one converter for all of a clip's stretches, since building one
    costs more than decoding a stretch (measured: benchmarks/README.md). Output sample k is input second k / 16000 of
    all frames pushed."""

    def __init__(self) -> None:
        self._converter: av.AudioResampler | None = None
        self._seconds_in = 0.0  # a float counts the samples of hours exactly enough
        self._samples_out = 0

    def stale(self) -> int:
        """How many of the next samples out belong to frames pushed before now (held back by the filter): to drop."""
        return round(self._seconds_in * AUDIO_RATE) - self._samples_out

    def push(self, frame: av.AudioFrame) -> list[np.ndarray]:
        if self._converter is None:
            self._converter = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_RATE)
        self._seconds_in += frame.samples / frame.sample_rate
        frame.pts = None  # the stretches jump in time: the converter must not fill the gaps with silence
        return self._count([out.to_ndarray().reshape(-1) for out in self._converter.resample(frame)])

    def flush(self) -> list[np.ndarray]:
        """The samples still held back; the next push starts afresh."""
        out = [o.to_ndarray().reshape(-1) for o in self._converter.resample(None)] if self._converter else []
        self._converter, self._seconds_in, self._samples_out = None, 0.0, 0
        return out

    def _count(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        self._samples_out += sum(len(c) for c in chunks)
        return chunks


def _seek(container: Any, stream: Any, seconds: float | None) -> None:
    """Put `stream`'s decoder at the packet before `seconds`, or before all of them (None).

    Before all means a little before the stream's start: an MP4's AAC priming packet lies there,
    and a seek that reaches it trims it as a fresh read does (one that lands at 0 skips it and
    the first frame decodes wrong). AVI's demuxer refuses such a seek; its first packet is at 0.
    """
    first = float((stream.start_time or 0) * stream.time_base)
    try:
        container.seek(
            int((seconds if seconds is not None else first - 1.0) / stream.time_base), stream=stream, backward=True
        )
    except av.FFmpegError:
        container.seek(stream.start_time or 0, stream=stream, backward=True)
    stream.codec_context.flush_buffers()


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
    mel = lambda hz: 2595 * np.log10(1 + hz / 700)
    hz = lambda m: 700 * (10 ** (m / 2595) - 1)
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

"""Samplers: which frames of a clip to take, by presentation-order index. Deterministic for a given seed."""

from __future__ import annotations

import numpy as np

from vidops.components.params import ExtractParams


class ClipTooShort(ValueError):
    """The clip has fewer frames than the sampler needs, and params say to skip such clips."""


def uniform(n_frames: int, n: int) -> np.ndarray:
    """The centre frame of each of `n` equal segments."""
    return ((np.arange(n) + 0.5) * n_frames / n).astype(np.int64)


def segments(n_frames: int, n: int, rng: np.random.Generator | None) -> np.ndarray:
    """TSN: one frame per equal segment, at a random place in it when `rng` is given (training), else its centre."""
    if rng is None:
        return uniform(n_frames, n)
    edges = np.arange(n + 1) * n_frames / n
    return np.minimum(np.floor(edges[:-1] + rng.random(n) * np.diff(edges)).astype(np.int64), n_frames - 1)


def dense(n_frames: int, run_length: int, interval: int, runs: int) -> np.ndarray:
    """`runs` runs of `run_length` frames `interval` apart, their starts spread evenly over the clip."""
    span = (run_length - 1) * interval + 1
    starts = np.linspace(0, max(n_frames - span, 0), runs).round().astype(np.int64)
    return (starts[:, None] + np.arange(run_length) * interval).reshape(-1)


def sample_indices(n_frames: int, params: ExtractParams, rng: np.random.Generator | None) -> tuple[np.ndarray, bool]:
    """Indices for one clip by `params.sampler`, and whether they were padded (a clip too short repeats its last
    frame)."""
    if params.sampler == "uniform":
        wanted, needed = uniform(n_frames, params.frames), params.frames
    elif params.sampler == "segments":
        wanted, needed = segments(n_frames, params.frames, rng), params.frames
    else:
        wanted = dense(n_frames, params.frames, params.frame_interval, params.runs)
        needed = (params.frames - 1) * params.frame_interval + 1
    if n_frames >= needed:
        return wanted, False
    if params.short_clips == "skip":
        raise ClipTooShort(f"{n_frames} frames, the {params.sampler} sampler needs {needed}")
    return np.minimum(wanted, n_frames - 1), True

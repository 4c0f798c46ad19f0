"""`vidops bench extract`: vidops's extraction against the ffmpeg CLI decoding the same clips fully.

In one run, on clips it generates (10 s, 640x360, 25 fps, x264 defaults, so B-frames and
a long GOP, plus AAC audio), it times:
  (a) the anchor: the ffmpeg CLI decoding each clip fully to raw RGB frames at the same size;
  (b) a naive loop that decodes and converts every frame in Python and keeps N of them;
  (c) vidops sparse extraction of N frames plus log-mel features;
  (d) vidops dense extraction of every frame;
each over the same number of worker processes, and (c) again with 1 and 2 workers.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from vidops.components.extraction import extract_clip
from vidops.components.media import mux_audio
from vidops.components.params import ExtractParams


@dataclass(frozen=True)
class BenchConfig:
    clips: int = 24
    seconds: float = 10.0
    width: int = 640
    height: int = 360
    frames: int = 16
    size: int = 112
    workers: int = 2


def make_clips(folder: Path, config: BenchConfig) -> list[Path]:
    """The benchmark's clips, written once and reused: moving texture with noise, x264's default settings."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"clip_{i:03d}_{config.width}x{config.height}_{config.seconds:g}s.mp4" for i in range(config.clips)]
    todo = [p for p in paths if not p.is_file()]
    with ProcessPoolExecutor(config.workers) as pool:
        list(pool.map(_make_clip, todo, [config] * len(todo)))
    return paths


def _make_clip(path: Path, config: BenchConfig) -> None:
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    n = round(config.seconds * 25)
    texture = rng.integers(0, 255, (config.height // 8 + 2, config.width // 8 + 2, 3), dtype=np.uint8)
    texture = np.kron(texture, np.ones((8, 8, 1), np.uint8))
    partial = path.with_name(f".{path.name}.partial.mp4")
    with av.open(str(partial), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = config.width, config.height, "yuv420p"
        sound = out.add_stream("aac", rate=16000, layout="mono")
        for i in range(n):
            frame = np.roll(texture, (i, 2 * i), axis=(0, 1))[: config.height, : config.width]
            noisy = np.clip(frame + rng.normal(0, 6, frame.shape), 0, 255).astype(np.uint8)
            out.mux(video.encode(av.VideoFrame.from_ndarray(noisy, format="rgb24")))
        out.mux(video.encode())
        mux_audio(out, sound, 0.1 * np.sin(np.arange(int(16000 * config.seconds)) / 20))
    partial.rename(path)


def ffmpeg_full_decode(path: Path, size: int) -> None:
    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-an", "-vf", f"scale={size}:{size}",
               "-pix_fmt", "rgb24", "-f", "rawvideo", "-"]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def naive_decode(path: Path, size: int, frames: int) -> None:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        every = [f.to_ndarray(format="rgb24", width=size, height=size) for f in container.decode(stream)]
    keep = np.linspace(0, len(every) - 1, frames).astype(int)
    np.stack([every[i] for i in keep])


def vidops_sparse(clip: tuple[Path, int], size: int, frames: int) -> None:
    """`clip` is a path and its frame count, as the catalog hands it to extraction."""
    path, n = clip
    extract_clip(path, n, ExtractParams(frames=frames, size=size, audio="logmel"))


def vidops_dense(clip: tuple[Path, int], size: int, frames: int) -> None:
    path, n = clip
    extract_clip(path, n, ExtractParams(sampler="dense", frames=n, clips=1, size=size, audio="none"))


def _with_frame_counts(paths: list[Path]) -> list[tuple[Path, int]]:
    counted = []
    for path in paths:
        with av.open(str(path)) as container:
            counted.append((path, container.streams.video[0].frames))
    return counted


def timed(work: Callable[..., None], paths: list[Any], workers: int, *args: object) -> float:
    """Seconds to run `work(path, *args)` over all paths in `workers` processes."""
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(work, paths, *([a] * len(paths) for a in args)))
    return time.perf_counter() - start


def run(folder: Path, config: BenchConfig) -> dict[str, float]:
    paths = make_clips(folder, config)
    counted = _with_frame_counts(paths)
    timed(vidops_sparse, counted[:1], 1, config.size, config.frames)  # warm the page cache and imports
    w, s, n = config.workers, config.size, config.frames
    return {
        "a_ffmpeg_full_decode": timed(ffmpeg_full_decode, paths, w, s),
        "b_naive_all_frames": timed(naive_decode, paths, w, s, n),
        "c_vidops_sparse": timed(vidops_sparse, counted, w, s, n),
        "d_vidops_dense": timed(vidops_dense, counted, w, s, n),
        "c_vidops_sparse_1_worker": timed(vidops_sparse, counted, 1, s, n),
    }


def report(t: dict[str, float], config: BenchConfig) -> str:
    lines = [f"{config.clips} clips of {config.seconds:g} s {config.width}x{config.height}, {config.frames} frames at {config.size}px, {config.workers} workers"]
    lines += [f"  {name:<28} {seconds:8.2f} s" for name, seconds in t.items()]
    a = t["a_ffmpeg_full_decode"]
    lines += [
        f"  sparse / ffmpeg (c/a)        {t['c_vidops_sparse'] / a:8.2f}   target <= 0.5",
        f"  dense / ffmpeg (d/a)         {t['d_vidops_dense'] / a:8.2f}   target <= 1.1",
        f"  sparse / naive (c/b)         {t['c_vidops_sparse'] / t['b_naive_all_frames']:8.2f}",
        f"  1 -> {config.workers} workers speed-up     {t['c_vidops_sparse_1_worker'] / t['c_vidops_sparse']:8.2f}   target >= 1.8",
    ]
    return "\n".join(lines)

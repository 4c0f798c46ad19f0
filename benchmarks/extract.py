"""`vidops bench extract`: vidops's extraction against the decoder's limit and the ffmpeg CLI, on the same clips.

Two corpora of clips it generates: long-GOP (10 s, 640x360, 25 fps, x264 defaults, so B-frames
and one keyframe per clip, plus AAC audio) and short-GOP (UCF101-shaped: 7 s, 320x240, 25 fps,
MPEG-4 Part 2 tagged XVID in AVI, a keyframe every 25 frames, MP3 audio). In one run it times:
  (l) the limit: PyAV decoding, for the frames sparse extraction wants, only the packets that
      must be decoded (from the keyframe before each wanted frame up to it, less unreferenced
      H.264 frames nobody wants), nothing converted; (la) the same plus the audio packets the
      features need, decoded and not resampled;
  (a) the ffmpeg CLI decoding each clip fully to raw RGB frames at the same size;
  (b) a naive loop that decodes and converts every frame in Python and keeps N of them;
  (c) vidops sparse extraction of N frames plus log-mel features, and of the frames alone;
  (d) vidops dense extraction of every frame;
each over the same number of worker processes, and (c) again with 1 worker.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np

from vidops.components.extraction import extract_clip
from vidops.components.media import _is_avcc_h264, _unreferenced_h264, mux_audio, only_stream
from vidops.components.params import ExtractParams
from vidops.components.sampling import uniform

Corpus = Literal["long-gop", "short-gop"]
CORPORA: tuple[Corpus, ...] = ("long-gop", "short-gop")
SECONDS: dict[Corpus, float] = {"long-gop": 10.0, "short-gop": 7.0}
UCF101_SIZE = (320, 240)
UCF101_GOP = 25  # frames from one keyframe to the next, as UCF101's XviD and most camera footage have
# targets
SPARSE_OVER_LIMIT = 1.15
SHORT_GOP_SPARSE_OVER_FFMPEG = 0.3


@dataclass(frozen=True)
class BenchConfig:
    clips: int = 24
    seconds: float | None = None  # None: the corpus's own (SECONDS)
    corpus: Corpus = "long-gop"
    width: int = 640  # long-GOP clips; short-GOP ones are UCF101_SIZE
    height: int = 360
    frames: int = 16
    size: int = 112
    workers: int = 2

    @property
    def clip_seconds(self) -> float:
        return self.seconds if self.seconds is not None else SECONDS[self.corpus]


def make_clips(folder: Path, config: BenchConfig) -> list[Path]:
    """The corpus's clips, written once under `folder` and reused."""
    if config.corpus == "short-gop":
        return write_ucf101_clips(folder / "short-gop", config.clips, config.clip_seconds, config.workers)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [
        folder / f"clip_{i:03d}_{config.width}x{config.height}_{config.clip_seconds:g}s.mp4"
        for i in range(config.clips)
    ]
    todo = [p for p in paths if not p.is_file()]
    with ProcessPoolExecutor(config.workers) as pool:
        list(pool.map(_make_clip, todo, [config] * len(todo)))
    return paths


def _make_clip(path: Path, config: BenchConfig) -> None:
    """Moving texture with noise, x264's default settings."""
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    n = round(config.clip_seconds * 25)
    partial = path.with_name(f".{path.name}.partial.mp4")
    with av.open(str(partial), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = config.width, config.height, "yuv420p"
        sound = out.add_stream("aac", rate=16000, layout="mono")
        for image in _moving_texture(rng, config.width, config.height, n):
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(video.encode())
        mux_audio(out, sound, 0.1 * np.sin(np.arange(int(16000 * config.clip_seconds)) / 20))
    partial.rename(path)


def write_ucf101_clips(folder: Path, count: int, seconds: float = 7.0, workers: int = 2) -> list[Path]:
    """`count` UCF101-shaped clips in `folder` (written once, then reused), each distinct; their paths.

    320x240, 25 fps, MPEG-4 Part 2 tagged XVID, a keyframe every 25 frames, no B-frames, MP3 stereo
    at 44.1 kHz, in AVI: `ucf101_0000_7s.avi`, ...
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"ucf101_{i:04d}_{seconds:g}s.avi" for i in range(count)]
    todo = [(p, i) for i, p in enumerate(paths) if not p.is_file()]
    with ProcessPoolExecutor(max(1, min(workers, len(todo)))) as pool:
        list(pool.map(write_ucf101_clip, [p for p, _ in todo], [s for _, s in todo], [seconds] * len(todo)))
    return paths


def write_ucf101_clip(path: Path, seed: int, seconds: float = 7.0) -> Path:
    """One UCF101-shaped clip (see `write_ucf101_clips`) of moving noisy texture drawn from `seed`, and a tone."""
    rng = np.random.default_rng(seed)
    width, height = UCF101_SIZE
    partial = path.with_name(f".{path.name}.partial.avi")
    with av.open(str(partial), "w", format="avi") as out:
        video = out.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.bit_rate = 400_000  # about UCF101's
        video.codec_context.codec_tag = "XVID"
        video.codec_context.gop_size = UCF101_GOP
        video.codec_context.max_b_frames = 0
        sound = out.add_stream("libmp3lame", rate=44_100, layout="stereo")
        sound.bit_rate = 128_000
        for i, image in enumerate(_moving_texture(rng, width, height, round(seconds * 25))):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode())
        tone = (0.1 * np.sin(np.arange(int(44_100 * seconds)) * rng.uniform(0.02, 0.2))).astype(np.float32)
        packets = []
        for start in range(0, len(tone), 1152):  # MP3's frame
            chunk = av.AudioFrame.from_ndarray(
                np.stack([tone[start : start + 1152]] * 2), format="fltp", layout="stereo"
            )
            chunk.sample_rate, chunk.pts = 44_100, start
            packets += sound.encode(chunk)
        packets += sound.encode()
        # LAME's first packet starts early (its encoder delay); AVI cannot say so, and shifting the whole file for it
        # would leave a hole after the first video frame (which would then read as variable frame rate)
        early = packets[0].pts or 0
        for packet in packets:
            packet.pts, packet.dts = packet.pts - early, packet.dts - early
            out.mux(packet)
    partial.rename(path)
    return path


def _moving_texture(rng: np.random.Generator, width: int, height: int, n: int) -> Iterator[np.ndarray]:
    """`n` RGB frames of a random 8-pixel-block texture drifting down and right, with fresh noise each frame."""
    texture = rng.integers(0, 255, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    texture = np.kron(texture, np.ones((8, 8, 1), np.uint8))
    for i in range(n):
        frame = np.roll(texture, (i, 2 * i), axis=(0, 1))[:height, :width]
        yield np.clip(frame + rng.normal(0, 6, frame.shape), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class LimitPlan:
    """What the decoder must do for one clip's wanted frames, worked out beforehand (untimed)."""

    path: Path
    runs: tuple[tuple[int, frozenset[int]], ...]  # (keyframe pts to seek to, wanted pts decoded from it on)
    skip: frozenset[int]  # pts of unreferenced H.264 frames nobody wants
    audio: tuple[tuple[float, float], ...] = ()  # (seconds to seek to, seconds to decode up to): the features' audio


def plan_limit(path: Path, n_frames: int, frames: int) -> LimitPlan:
    """The runs of decoding the uniform sampler's `frames` frames need: one per keyframe that precedes a wanted frame
    with no wanted frame between them, as a decoder that knew the index would do them."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        skippable = _is_avcc_h264(stream)
        time_base = float(stream.time_base)  # read while open: a closed container's streams answer None
        packets = [
            (p.pts, p.is_keyframe, skippable and _unreferenced_h264(bytes(p)))
            for p in container.demux(stream)
            if p.size
        ]
    pts = np.sort([p for p, _, _ in packets])
    keyframes = np.sort([p for p, key, _ in packets if key])
    wanted = sorted(set(int(pts[i]) for i in uniform(n_frames, frames)))
    runs: list[tuple[int, set[int]]] = []
    for target in wanted:
        keyframe = int(keyframes[max(np.searchsorted(keyframes, target, side="right") - 1, 0)])
        if runs and max(runs[-1][1]) >= keyframe:
            runs[-1][1].add(target)  # no keyframe between the last wanted frame and this one: decode on
        else:
            runs.append((keyframe, {target}))
    skip = frozenset(p for p, _, unreferenced in packets if unreferenced) - set(wanted)
    return LimitPlan(
        path, tuple((k, frozenset(t)) for k, t in runs), skip, _audio_plan(path, [p * time_base for p in wanted])
    )


def _audio_plan(path: Path, times: list[float]) -> tuple[tuple[float, float], ...]:
    """The stretches of audio the log-mel features of frames at `times` need, as `audio.frame_audio` decodes them: from
    its preroll before each stretch's first window to the end of its last."""
    from vidops.components.audio import _HOP, _WINDOW, PREROLL_FRAMES, STEP_RATE, STEPS_PER_FRAME, _stretches

    with av.open(str(path)) as container:
        if not container.streams.audio:
            return ()
        codec = container.streams.audio[0].codec_context
        preroll = PREROLL_FRAMES * codec.frame_size / codec.sample_rate
    steps = np.unique(
        (np.round(np.asarray(times) * STEP_RATE).astype(np.int64)[:, None] + np.arange(STEPS_PER_FRAME)).ravel()
    )
    half = _WINDOW / 2 / (_HOP * STEP_RATE)  # half a window, in seconds
    return tuple((lo / STEP_RATE - half - preroll, hi / STEP_RATE + half) for lo, hi in _stretches(steps, preroll))


def decoder_limit(plan: LimitPlan) -> None:
    """Decode the planned packets and nothing else: no timeline pass, no conversion, no audio, other streams unread."""
    with av.open(str(plan.path)) as container, only_stream(container, container.streams.video[0]):
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"
        for keyframe, targets in plan.runs:
            container.seek(keyframe, stream=stream, backward=True)
            stream.codec_context.flush_buffers()
            left = set(targets)
            for packet in container.demux(stream):
                if packet.size and packet.pts in plan.skip:
                    continue
                left -= {frame.pts for frame in stream.decode(packet)}
                if not left:
                    break
            if left:  # a limit that skipped wanted frames would flatter it
                raise RuntimeError(
                    f"{plan.path}: the limit's run from pts {keyframe} did not decode pts {sorted(left)}"
                )


def decoder_limit_with_audio(plan: LimitPlan) -> None:
    """The limit, plus decoding the audio packets the features need (`plan.audio`) and nothing else: not resampled, no
    features computed. Sparse extraction with audio does this decoding too, so it is the limit it is measured
    against."""
    decoder_limit(plan)
    with av.open(str(plan.path)) as container:
        stream = container.streams.audio[0]
        with only_stream(container, stream):
            for seek, until in plan.audio:
                container.seek(max(int(seek / stream.time_base), 0), stream=stream, backward=True)
                stream.codec_context.flush_buffers()
                for frame in container.decode(stream):
                    if frame.time is not None and frame.time >= until:
                        break


def ffmpeg_full_decode(path: Path, size: int) -> None:
    import imageio_ffmpeg

    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-v",
        "error",
        "-i",
        str(path),
        "-an",
        "-vf",
        f"scale={size}:{size}",
        "-pix_fmt",
        "rgb24",
        "-f",
        "rawvideo",
        "-",
    ]
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


def vidops_sparse_frames(clip: tuple[Path, int], size: int, frames: int) -> None:
    """(c) without the audio: the same work as the limit, plus the timeline pass and the conversion."""
    path, n = clip
    extract_clip(path, n, ExtractParams(frames=frames, size=size, audio="none"))


def vidops_dense(clip: tuple[Path, int], size: int, frames: int) -> None:
    path, n = clip
    extract_clip(path, n, ExtractParams(sampler="dense", frames=n, clips=1, size=size, audio="none"))


def _with_frame_counts(paths: list[Path]) -> list[tuple[Path, int]]:
    """Each path with its frame count as the catalog has it: the packets that hold a frame."""
    counted = []
    for path in paths:
        with av.open(str(path)) as container:
            counted.append((path, sum(1 for packet in container.demux(video=0) if packet.size)))
    return counted


def timed(work: Callable[..., None], paths: list[Any], workers: int, *args: object) -> float:
    """Seconds to run `work(path, *args)` over all paths in `workers` processes."""
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(work, paths, *([a] * len(paths) for a in args)))
    return time.perf_counter() - start


def run(folder: Path, config: BenchConfig) -> dict[str, float]:
    """Seconds of each timing over the corpus's clips."""
    paths = make_clips(folder, config)
    counted = _with_frame_counts(paths)
    plans = [plan_limit(path, n, config.frames) for path, n in counted]
    w, s, n = config.workers, config.size, config.frames
    # warm the page cache, and the libraries' first-call set-up (swscale's is large enough to skew a timing:
    # benchmarks/README.md) here, where the workers fork from
    for work, args in (
        (decoder_limit_with_audio, (plans[0],)),
        (naive_decode, (paths[0], s, n)),
        (vidops_sparse, (counted[0], s, n)),
        (vidops_dense, (counted[0], s, n)),
    ):
        work(*args)
    return {
        "l_decoder_limit": timed(decoder_limit, plans, w),
        "la_decoder_limit_with_audio": timed(decoder_limit_with_audio, plans, w),
        "a_ffmpeg_full_decode": timed(ffmpeg_full_decode, paths, w, s),
        "b_naive_all_frames": timed(naive_decode, paths, w, s, n),
        "c_vidops_sparse": timed(vidops_sparse, counted, w, s, n),
        "c_vidops_sparse_frames_only": timed(vidops_sparse_frames, counted, w, s, n),
        "d_vidops_dense": timed(vidops_dense, counted, w, s, n),
        "c_vidops_sparse_1_worker": timed(vidops_sparse, counted, 1, s, n),
    }


def report(t: dict[str, float], config: BenchConfig) -> str:
    width, height = UCF101_SIZE if config.corpus == "short-gop" else (config.width, config.height)
    shape = f"{width}x{height}"
    lines = [
        f"{config.corpus}: {config.clips} clips of {config.clip_seconds:g} s {shape}, {config.frames} frames at "
        f"{config.size}px, {config.workers} workers"
    ]
    lines += [f"  {name:<28} {seconds:8.2f} s" for name, seconds in t.items()]
    a, c = t["a_ffmpeg_full_decode"], t["c_vidops_sparse"]
    sparse_target = f"target <= {SHORT_GOP_SPARSE_OVER_FFMPEG}" if config.corpus == "short-gop" else "target <= 0.5"
    lines += [
        f"  sparse / limit (c/l)         {c / t['l_decoder_limit']:8.2f}   target <= {SPARSE_OVER_LIMIT}",
        f"  sparse / limit with audio    {c / t['la_decoder_limit_with_audio']:8.2f}"
        "   (c/la: the same streams decoded)",
        f"  frames only / limit          {t['c_vidops_sparse_frames_only'] / t['l_decoder_limit']:8.2f}",
        f"  sparse / ffmpeg (c/a)        {c / a:8.2f}   {sparse_target}",
        f"  dense / ffmpeg (d/a)         {t['d_vidops_dense'] / a:8.2f}   target <= 1.1",
        f"  sparse / naive (c/b)         {c / t['b_naive_all_frames']:8.2f}",
        f"  1 -> {config.workers} workers speed-up     {t['c_vidops_sparse_1_worker'] / c:8.2f}   target >= 1.8",
    ]
    return "\n".join(lines)

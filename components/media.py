"""PyAV helpers shared by the stages: writing and reading encoded clips."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

AUDIO_RATE = 16_000  # Hz, mono: the audio every task's features are computed from
_AAC_FRAME = 1024  # samples per AAC frame


def write_clip(path: Path, frames: Iterable[np.ndarray], fps: int, audio: np.ndarray | None) -> None:
    """Encode RGB uint8 frames [H, W, 3] as H.264 and float audio in [-1, 1] at 16 kHz as AAC into an MP4."""
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"{path}: no frames to write")
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.height, video.width = first.shape[:2]
        video.pix_fmt = "yuv420p"
        # A seed must fix the bytes. With x264's lookahead (rc-lookahead, mbtree) on, the same frames can encode
        # differently from run to run (with an audio stream beside), so it is off.
        video.options = {"preset": "veryfast", "crf": "20", "threads": "1", "x264-params": "rc-lookahead=0:mbtree=0"}
        sound = container.add_stream("aac", rate=AUDIO_RATE, layout="mono") if audio is not None else None
        for frame in (first, *frames):
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode())
        if sound is not None:
            mux_audio(container, sound, audio)


def mux_audio(
    container: av.container.OutputContainer,
    stream: av.audio.stream.AudioStream,
    audio: np.ndarray,
    first_sample: int = 0,
) -> None:
    """Encode mono float audio in [-1, 1] at 16 kHz into `stream`, starting at sample `first_sample`, then flush it."""
    samples = np.clip(audio, -1.0, 1.0).astype(np.float32)
    for start in range(0, len(samples), _AAC_FRAME):
        chunk = av.AudioFrame.from_ndarray(samples[None, start : start + _AAC_FRAME], format="fltp", layout="mono")
        chunk.sample_rate = AUDIO_RATE
        chunk.pts = first_sample + start
        container.mux(stream.encode(chunk))
    container.mux(stream.encode())


@dataclass(frozen=True)
class Frames:
    """Decoded frames, uint8 [N, S, S, 3] upright, with their presentation-order indices and times in seconds."""

    frames: np.ndarray
    indices: np.ndarray
    times: np.ndarray


def read_frames(path: Path, indices: np.ndarray, size: int, resize: str = "squash", dense: bool = False) -> Frames:
    """Decode exactly the frames at `indices` (0-based, in presentation order), upright and resized (see
    `decode_frames`)."""
    with open_clip(path) as container:
        return decode_frames(container, path, indices, size, resize, dense)


def open_clip(path: Path) -> av.container.InputContainer:
    """The clip opened for reading, to hand to `decode_frames` and then `audio.frame_audio`; use it in a `with`."""
    return av.open(str(path))


def decode_frames(
    container: av.container.InputContainer,
    path: Path,
    indices: np.ndarray,
    size: int,
    resize: str = "squash",
    dense: bool = False,
) -> Frames:
    """Decode exactly the frames at `indices` (0-based, in presentation order) of the open clip at `path`, upright and
    resized.

    Sparse reads seek to the keyframe before each wanted frame when that skips decoding, and
    skip H.264 frames that are neither wanted nor referenced; `dense` decodes the clip once
    from the start instead. Only the wanted frames are converted, each as soon as it decodes.
    """
    stream = container.streams.video[0]
    # frame threads pay off decoding straight through; jumping about, they only fill up and drain, and slice threads
    # read sparse frames faster (measured: benchmarks/README.md)
    stream.thread_type = "AUTO" if dense else "SLICE"
    with only_stream(container, stream):
        pts, keyframes = _timeline(container, stream)
        if indices.max() >= len(pts):
            raise ValueError(f"{path}: frame {int(indices.max())} wanted, the clip has {len(pts)}")
        wanted = sorted(set(int(pts[i]) for i in indices))
        container.seek(0, stream=stream, backward=True)  # back from the demux pass
        frames = (
            _decode_dense(container, stream, wanted) if dense else _decode_sparse(container, stream, wanted, keyframes)
        )
        # one scaler for the clip: a new one per frame (what frame.to_ndarray does) costs many times the scaling itself
        # (measured: benchmarks/README.md)
        scaler = VideoReformatter()
        decoded = {p: _upright(frame, size, resize, scaler) for p, frame in frames}
    time_base = stream.time_base
    missing = [p for p in wanted if p not in decoded]
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} of {len(wanted)} wanted frames did not decode (first at pts {missing[0]})"
        )
    chosen = [int(pts[i]) for i in indices]
    times = np.array([float(p * time_base) for p in chosen])
    return Frames(np.stack([decoded[p] for p in chosen]), np.asarray(indices, dtype=np.int64), times)


@contextmanager
def only_stream(container: Any, stream: Any) -> Iterator[None]:
    """While inside, the demuxer skips the other streams' packets rather than reading and dropping them, which makes
    reading one stream of an MP4 faster (measured: benchmarks/README.md)."""
    others = [(s, s.discard) for s in container.streams if s.index != stream.index]
    for other, _ in others:
        other.discard = av.stream.Discard.all
    try:
        yield
    finally:
        for other, discard in others:
            other.discard = discard


def _timeline(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> tuple[np.ndarray, np.ndarray]:
    """Every frame's pts in presentation order, and the keyframes' pts, from one demux pass (no decoding)."""
    pts, keyframes = [], []
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        if packet.pts is None:
            raise ValueError("packets without timestamps")
        pts.append(packet.pts)
        if packet.is_keyframe:
            keyframes.append(packet.pts)
    return np.sort(np.array(pts, dtype=np.int64)), np.sort(np.array(keyframes, dtype=np.int64))


def _decode_dense(container: Any, stream: Any, wanted: list[int]) -> Iterator[tuple[int, av.VideoFrame]]:
    """(pts, frame) of each wanted frame, decoding every frame from the start until the last one wanted."""
    targets, last = set(wanted), wanted[-1]
    for frame in container.decode(stream):
        if frame.pts in targets:
            yield frame.pts, frame
        if frame.pts is not None and frame.pts >= last:
            return


def _decode_sparse(
    container: Any, stream: Any, wanted: list[int], keyframes: np.ndarray
) -> Iterator[tuple[int, av.VideoFrame]]:
    """(pts, frame) of each wanted frame, seeking past stretches without one and skipping unreferenced frames."""
    targets, found = set(wanted), set()
    skippable = _is_avcc_h264(stream)
    packets = None
    position = None  # pts of the last packet sent to the decoder
    for target in wanted:
        if target in found:
            continue
        keyframe = keyframes[max(np.searchsorted(keyframes, target, side="right") - 1, 0)]
        if packets is None or position is None or position < keyframe:
            # a keyframe lies between here and the target: jump to it rather than decode the gap
            container.seek(int(keyframe), stream=stream, backward=True)
            stream.codec_context.flush_buffers()
            packets = container.demux(stream)
        for packet in packets:  # empty packets too: they flush the decoder at the end, and carry AVI's packed frames
            position = packet.pts if packet.pts is not None else position
            if skippable and packet.size and packet.pts not in targets and _unreferenced_h264(bytes(packet)):
                continue  # no other frame refers to it and nobody asked for it: not worth decoding
            for frame in stream.decode(packet):
                if frame.pts in targets and frame.pts not in found:
                    found.add(frame.pts)
                    yield frame.pts, frame
            if target in found:
                break


def _is_avcc_h264(stream: Any) -> bool:
    """H.264 stored with length-prefixed NAL units (MP4, MOV, MKV), whose headers say which frames are referenced."""
    extradata = stream.codec_context.extradata
    return stream.codec_context.name == "h264" and bool(extradata) and extradata[0] == 1


def _unreferenced_h264(data: bytes) -> bool:
    """True when every slice in the packet has nal_ref_idc 0: no other frame is predicted from it.

    (A referenced B frame of a B-pyramid may serve later P frames too, so only these are safe to skip.)
    """
    i, slices = 0, 0
    while i + 5 <= len(data):
        size, header = int.from_bytes(data[i : i + 4], "big"), data[i + 4]
        if header & 0x1F in (1, 5):  # coded slice of a non-IDR or IDR picture
            slices += 1
            if header >> 5 & 3:
                return False
        i += 4 + size
    return slices > 0


def _upright(frame: av.VideoFrame, size: int, resize: str, scaler: VideoReformatter) -> np.ndarray:
    """The frame as uint8 [size, size, 3]: rotated as its display matrix says, then squashed, centre-cropped or
    letterboxed."""
    turns = round((frame.rotation or 0) / 90) % 4
    width, height = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)  # as displayed
    if resize == "squash":
        shown = (size, size)
    else:
        scale = size / (min if resize == "crop" else max)(width, height)
        shown = (max(1, round(width * scale)), max(1, round(height * scale)))
    # FFmpeg scales the stored picture; its sides are the displayed ones swapped when it is turned a quarter
    stored = (shown[1], shown[0]) if turns % 2 else shown
    image = np.rot90(scaler.reformat(frame, width=stored[0], height=stored[1], format="rgb24").to_ndarray(), k=turns)
    if resize == "crop":
        top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        return np.ascontiguousarray(image[top : top + size, left : left + size])
    canvas = np.zeros((size, size, 3), np.uint8)
    top, left = (size - image.shape[0]) // 2, (size - image.shape[1]) // 2
    canvas[top : top + image.shape[0], left : left + image.shape[1]] = image
    return canvas

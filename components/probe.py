"""Probing: every fact PyAV can tell about one clip (container, streams, size, rate, frames, audio, whether its first
and last frames decode), and a perceptual hash taken at three points of it: one row of the catalog table."""

from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

# What each row holds. `frames` is the stream's count where the packets agree with it,
# else the count of packets; `decode_error` is empty when the first and last frames decode.
PROBE_COLUMNS = (
    "size_bytes",
    "mtime_ns",
    "inode",
    "sha256",
    "readable",
    "error",
    "container",
    "video_streams",
    "video_codec",
    "pix_fmt",
    "width",
    "height",
    "rotation",
    "fps_nominal",
    "fps_average",
    "vfr",
    "duration_s",
    "frames_stream",
    "frames",
    "keyframe_interval",
    "audio_codec",
    "sample_rate",
    "channels",
    "audio_duration_s",
    "av_diff_s",
    "decode_error",
    "phash",
)
PHASH_FRACTIONS = (0.25, 0.5, 0.75)  # where in the clip the perceptual hash looks


def probe_clip(path: Path) -> dict[str, Any]:
    """Every fact PyAV can tell about one file; `readable` is False, with `error`, when it cannot be used."""
    row: dict[str, Any] = {**dict.fromkeys(PROBE_COLUMNS), "readable": False, "error": "", "decode_error": ""}
    try:
        stat = path.stat()
        row.update(size_bytes=stat.st_size, mtime_ns=stat.st_mtime_ns, inode=stat.st_ino)
        if stat.st_size == 0:
            row["error"] = "empty file"
            return row
        row["sha256"] = file_sha256(path)
    except OSError as exc:
        row["error"] = f"cannot read: {exc.strerror}" + (" (broken symlink)" if path.is_symlink() else "")
        return row
    try:
        row.update(_read_header(path))
        if not row["video_streams"]:
            row["error"] = "no video stream" + (f" (audio only: {row['audio_codec']})" if row["audio_codec"] else "")
            return row
        row.update(_scan_packets(path, row))
        row.update(_decode_samples(path, row))
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
        # FFmpeg's own words ("Invalid data found when processing input"), without errno and path
        row["error"] = getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"
        return row
    row["readable"] = not row["decode_error"]
    if row["decode_error"]:
        row["error"] = row["decode_error"]
    return row


def _read_header(path: Path) -> dict[str, Any]:
    with av.open(str(path)) as container:
        facts: dict[str, Any] = {"container": container.format.name, "video_streams": len(container.streams.video)}
        if container.streams.audio:
            audio = container.streams.audio[0]
            audio_s = _seconds(audio.duration, audio.time_base)
            facts.update(
                audio_codec=audio.codec_context.name,
                sample_rate=audio.rate,
                channels=audio.channels,
                audio_duration_s=audio_s,
            )
        if not container.streams.video:
            return facts
        video = container.streams.video[0]
        codec = video.codec_context
        duration = _seconds(video.duration, video.time_base) or (container.duration or 0) / av.time_base
        facts.update(
            video_codec=codec.name,
            pix_fmt=codec.pix_fmt,
            width=codec.width,
            height=codec.height,
            fps_nominal=_rate(video.base_rate or video.guessed_rate),
            fps_average=_rate(video.average_rate),
            duration_s=duration,
            frames_stream=video.frames or None,
        )
        if facts.get("audio_duration_s") is not None:
            facts["av_diff_s"] = abs(facts["audio_duration_s"] - duration)
        return facts


def _scan_packets(path: Path, header: dict[str, Any]) -> dict[str, Any]:
    """One demux pass, no decoding: frame count, keyframe spacing, and whether frame times are regular."""
    pts, keyframes, count = [], [], 0
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            if packet.size == 0:
                continue  # a flush packet, not a frame
            if packet.is_keyframe:
                keyframes.append(count)
            if packet.pts is not None:
                pts.append(packet.pts)
            count += 1
    gaps = np.diff(keyframes) if len(keyframes) > 1 else np.array([count])
    deltas = np.diff(np.sort(pts)) if count > 2 else np.array([1])
    vfr = bool(deltas.mean() > 0 and deltas.std() / deltas.mean() > 0.05)
    stream_count = header["frames_stream"]
    return {
        "frames": stream_count if stream_count == count else count,
        "keyframe_interval": int(gaps.max()),
        "vfr": vfr,
    }


def _decode_samples(path: Path, facts: dict[str, Any]) -> dict[str, Any]:
    """Decode the first frame, a frame at each PHASH_FRACTIONS point and the last frames; report what failed."""
    out: dict[str, Any] = {"decode_error": ""}
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        video.thread_type = "AUTO"
        first = next(container.decode(video), None)
        if first is None:
            return {"decode_error": "the first frame does not decode"}
        out["rotation"] = int(first.rotation or 0)
        start = first.pts or 0
        span = (facts["duration_s"] or 0) / float(video.time_base) if video.time_base else 0
        hashes = []
        for fraction in PHASH_FRACTIONS:
            frame = _frame_at(container, video, int(start + fraction * span)) if span else first
            hashes.append(_phash(frame or first))
        out["phash"] = "".join(hashes)
        last = _last_frame(container, video, int(start + span))
        if last is None:
            out["decode_error"] = "the last frames do not decode (truncated file?)"
        elif span and (last - start) < 0.9 * span * (1 - 1 / max(facts["frames"] or 1, 1)):
            out["decode_error"] = (
                f"decoding stops at {float((last - start) * video.time_base):.2f} s of {facts['duration_s']:.2f} s "
                "(truncated file?)"
            )
    return out


def _frame_at(container: Any, video: Any, pts: int) -> Any:
    container.seek(pts, stream=video, backward=True)
    for frame in container.decode(video):
        if frame.pts is not None and frame.pts >= pts:
            return frame
    return None


def _last_frame(container: Any, video: Any, end_pts: int) -> int | None:
    """The pts of the last frame that decodes after seeking to the keyframe before `end_pts`."""
    container.seek(max(end_pts, 0), stream=video, backward=True)
    last = None
    try:
        for frame in container.decode(video):
            last = frame.pts if frame.pts is not None else last
    except av.FFmpegError:
        pass  # a cut-short file ends in an error; what decoded before it still counts
    return last


def _phash(frame: Any) -> str:
    """64-bit DCT perceptual hash of one frame, as 16 hex digits (scaled by FFmpeg: no full-size copy)."""
    grey = frame.to_ndarray(format="gray", width=32, height=32).astype(np.float64)
    low = (_DCT @ grey @ _DCT.T)[:8, :8].flatten()[1:]  # low frequencies, DC term dropped
    bits = np.append(low > np.median(low), False)
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


_DCT = np.cos(np.pi * np.outer(np.arange(32), 2 * np.arange(32) + 1) / 64)


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read in blocks."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    return float(value * time_base) if value and time_base else None


def _rate(rate: Fraction | None) -> float | None:
    return float(rate) if rate else None

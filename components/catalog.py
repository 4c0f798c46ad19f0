"""Catalog: probe every clip of a dataset with PyAV into a manifest table (one row per clip)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import av
import pandas as pd

from components.errors import VidopsError

MANIFEST_COLUMNS = (
    "path", "label", "size_bytes", "sha256", "readable", "error", "container", "video_codec",
    "width", "height", "fps", "duration_s", "frames", "audio_codec", "sample_rate", "channels",
)  # fmt: skip
# nullable integers: an unreadable clip has no width, and that must not turn 96 into 96.0
_INT_COLUMNS = {name: "Int64" for name in ("size_bytes", "width", "height", "frames", "sample_rate", "channels")}


def probe_clip(path: Path) -> dict[str, Any]:
    """What PyAV can tell about one file; `readable` is False (with `error`) when it cannot be opened or decoded."""
    row: dict[str, Any] = dict.fromkeys(MANIFEST_COLUMNS)
    row.update(readable=False, error="", size_bytes=path.stat().st_size, sha256=_sha256(path))
    try:
        with av.open(str(path)) as container:
            row["container"] = container.format.name
            if not container.streams.video:
                row["error"] = "no video stream"
                return row
            video = container.streams.video[0]
            rate = video.average_rate or video.guessed_rate
            duration = video.duration * video.time_base if video.duration else (container.duration or 0) / av.time_base
            row.update(
                video_codec=video.codec_context.name,
                width=video.codec_context.width,
                height=video.codec_context.height,
                fps=float(rate) if rate else None,
                duration_s=float(duration),
                # some containers do not record the frame count: count packets then (no decoding)
                frames=video.frames or _count_packets(path),
            )
            if container.streams.audio:
                audio = container.streams.audio[0]
                row.update(audio_codec=audio.codec_context.name, sample_rate=audio.rate, channels=audio.channels)
            next(container.decode(video))
        row["readable"] = True
    except StopIteration:
        row["error"] = "video stream holds no decodable frame"
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def build_catalog(dataset_dir: Path) -> pd.DataFrame:
    """Probe every file under `dataset_dir/<label>/` into a manifest; `path` is relative to `dataset_dir`."""
    if not dataset_dir.is_dir():
        raise VidopsError(f"{dataset_dir}: no such dataset folder (expected <label>/<clip> files inside)")
    files = sorted(
        f for label in dataset_dir.iterdir() if label.is_dir() and not label.name.startswith(".")
        for f in label.iterdir() if f.is_file() and not f.name.startswith(".")
    )  # fmt: skip
    if not files:
        raise VidopsError(f"{dataset_dir}: no clips found (expected <label>/<clip> files inside)")
    rows = [{**probe_clip(f), "path": f.relative_to(dataset_dir).as_posix(), "label": f.parent.name} for f in files]
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).astype(_INT_COLUMNS)


def assign_splits(manifest: pd.DataFrame, test_fraction: float) -> pd.DataFrame:
    """Add a `split` column (train/test), stratified by label and decided by content hash, so renames keep splits."""
    out = manifest.copy()
    out["split"] = "train"
    for _, clips in out.groupby("label"):
        ordered = clips.sort_values("sha256").index
        n_test = min(len(ordered) - 1, max(1, round(len(ordered) * test_fraction)))
        out.loc[ordered[:n_test], "split"] = "test"
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _count_packets(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for p in container.demux(video=0) if p.size)


def read_manifest(path: Path) -> pd.DataFrame:
    """Read a manifest written by this module, with its integer columns restored."""
    if not path.is_file():
        raise VidopsError(f"{path}: no manifest; run the validate stage first")
    return pd.read_csv(path, keep_default_na=False, na_values=[""]).astype(_INT_COLUMNS)

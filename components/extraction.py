"""Extraction: N frames sampled uniformly from each accepted clip, resized, stored as one array file per split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.catalog import read_manifest
from components.errors import VidopsError
from components.io import atomic_path, write_json
from components.media import read_frames
from components.params import ExtractParams

SPLITS = ("train", "test")


@dataclass(frozen=True)
class FeatureSet:
    root: Path
    labels: tuple[str, ...]
    clips: dict[str, int]  # per split


def uniform_indices(n_frames: int, n: int) -> np.ndarray:
    """The centre frame of each of `n` equal segments of a clip of `n_frames` frames."""
    return ((np.arange(n) + 0.5) * n_frames / n).astype(np.int64)


def extract_features(dataset_dir: Path, accepted_manifest: Path, features_dir: Path, params: ExtractParams) -> FeatureSet:
    """Write `<split>.npz` (frames uint8 [clips, N, S, S, 3], labels, clip paths) and `index.json` under `features_dir`."""
    manifest = read_manifest(accepted_manifest)
    labels = tuple(sorted(manifest["label"].unique()))
    label_ids = {label: i for i, label in enumerate(labels)}
    (features_dir / "index.json").unlink(missing_ok=True)  # until the new shards are all written
    counts = {}
    for split in SPLITS:
        rows = manifest[manifest["split"] == split]
        frames = np.empty((len(rows), params.frames, params.size, params.size, 3), dtype=np.uint8)
        for slot, row in enumerate(rows.itertuples()):
            try:
                frames[slot] = read_frames(dataset_dir / row.path, uniform_indices(int(row.frames), params.frames), params.size)
            except (ValueError, OSError) as exc:
                raise VidopsError(f"{dataset_dir / row.path}: cannot extract frames: {exc}") from None
        with atomic_path(features_dir / f"{split}.npz") as tmp:
            with tmp.open("wb") as f:
                np.savez(f, frames=frames, labels=rows["label"].map(label_ids).to_numpy(np.int32), clips=rows["path"].to_numpy(str))
        counts[split] = len(rows)
    # the index goes last: its presence says the shards beside it are complete
    write_json(features_dir / "index.json", {"labels": list(labels), "frames": params.frames, "size": params.size, "clips": counts})
    return FeatureSet(features_dir, labels, counts)


def load_split(features_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Frames and integer labels of one split."""
    path = features_dir / f"{split}.npz"
    if not (features_dir / "index.json").is_file() or not path.is_file():
        raise VidopsError(f"{path}: no extracted features; run the extract stage first")
    with np.load(path) as data:
        return data["frames"], data["labels"]

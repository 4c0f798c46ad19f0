"""Extraction: sampled frames and aligned audio features of each accepted clip, one shard file per clip.

A shard is named by the clip's content hash and a hash of the extraction params, so a
re-run with the same params extracts nothing, a new clip extracts only itself, and changed
params extract everything again. A batch of clips is the unit of work: `extract_batch` is a
plain picklable function, run over processes here and wherever the flow's task runner sends it.
The index (index.csv, then index.json) is written last and lists every clip with its status; a
captioned task's captions of the clips extracted go beside it, keyed by the index's paths (no rows for another task).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidops.components import audio
from vidops.components.captions import CAPTION_COLUMNS, read_captions_csv
from vidops.components.catalog import read_catalog
from vidops.components.errors import VidopsError
from vidops.components.io import atomic_path, read_arrays, records, write_csv, write_json
from vidops.components.layout import CAPTIONS_FILE, INDEX, INDEX_TABLE, SHARDS
from vidops.components.media import decode_frames, open_clip
from vidops.components.parallel import Mapper, in_processes, in_this_process
from vidops.components.params import ExtractParams
from vidops.components.sampling import ClipTooShort, sample_indices

SPLITS = ("train", "test")
# Failures of the machine, not of a clip: they stop the stage (nothing is cached), where a clip's own decoding error
# is recorded in the index and the stage goes on: a full disk must not cost clips silently.
MACHINE_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EIO,
        errno.EACCES,
        errno.EPERM,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
    }
)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ClipFeatures:
    """What the model sees of one clip."""

    frames: np.ndarray  # uint8 [N, S, S, 3]
    indices: np.ndarray  # presentation-order frame numbers
    times: np.ndarray  # seconds
    audio: np.ndarray  # float32 [N, 4, F]; silence where there is none
    audio_ok: np.ndarray  # bool [N]: the frame had audio for all its steps
    has_audio: bool
    padded: bool  # the clip was shorter than the sampler needs; its last frame repeats


@dataclass(frozen=True)
class ClipJob:
    path: str
    shard: str  # file name under clips/
    frames: int  # the clip's frame count, from the catalog
    seed: int | None  # for the segments sampler; None: centred (evaluation)
    row: dict[str, Any]  # path, label, split, sha256, for the index


# Fewer clips to extract than this are extracted in this process: a worker's start (importing PyAV, numpy and pandas)
# costs more than a re-run's handful of new clips takes (measured: benchmarks/README.md).
IN_PROCESS_CLIPS = 64
# index.csv's columns: the clip (as the manifest has it), its shard, how its extraction went, and the shard's size and
# mtime when it was written (a re-run trusts an unchanged shard without opening it)
INDEX_COLUMNS = (
    "path",
    "label",
    "group",
    "split",
    "sha256",
    "shard",
    "status",
    "error",
    "padded",
    "has_audio",
    "reused",
    "shard_bytes",
    "shard_mtime_ns",
)


@dataclass(frozen=True)
class FeatureSet:
    root: Path
    labels: tuple[str, ...]
    clips: dict[str, int]  # usable clips per split
    extracted: int  # written this run
    reused: int  # already there from an earlier run with the same params
    failed: int  # recorded in the index with their error


def extract_clip(path: Path, n_frames: int, params: ExtractParams, seed: int | None = None) -> ClipFeatures:
    """Sample, decode and align one clip; raises ClipTooShort or ValueError with what went wrong."""
    rng = np.random.default_rng(seed) if seed is not None else None
    indices, padded = sample_indices(n_frames, params, rng)
    kind = params.audio if params.audio != "none" else "logmel"
    with open_clip(path) as container:  # once for video and audio
        decoded = decode_frames(container, path, indices, params.size, params.resize, dense=params.sampler == "dense")
        none = params.audio == "none"
        sound = (
            audio.silent_frames(len(indices), kind, False)
            if none
            else audio.frame_audio(container, decoded.times, kind)
        )
    return ClipFeatures(
        decoded.frames, decoded.indices, decoded.times, sound.features, sound.ok, sound.has_audio, padded
    )


# bumped when the same params give other shards, so a re-run extracts again instead of mixing the two.
# 2: audio features decoded around the sampled frames
FEATURES_VERSION = 2


def params_hash(params: ExtractParams) -> str:
    """What the shards depend on: every extraction param but how the work is spread, and the features' version."""
    relevant = {
        **params.model_dump(mode="json", exclude={"workers", "batch_size", "runs"}),
        "version": FEATURES_VERSION,
    }
    relevant["clips"] = params.runs  # under the name it had when shards were first named: they keep their names
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


def extract_batch(jobs: list[ClipJob], params: ExtractParams, shard_dir: str) -> list[dict[str, Any]]:
    """Extract each clip of the batch whose shard is missing; one index row per clip (status ok, or error with why)."""
    rows = []
    for job in jobs:
        target = Path(shard_dir) / job.shard
        row = {
            **job.row,
            "shard": job.shard,
            "status": "ok",
            "error": "",
            "padded": False,
            "has_audio": False,
            "reused": False,
            "shard_bytes": 0,
            "shard_mtime_ns": 0,
        }
        try:
            if target.is_file():
                row.update(reused=_read_flags(target, row))
            if not row["reused"]:
                clip = extract_clip(Path(job.path), job.frames, params, job.seed)
                with atomic_path(target) as tmp, tmp.open("wb") as f:
                    np.savez(f, **{k: getattr(clip, k) for k in ClipFeatures.__dataclass_fields__})
                row.update(padded=clip.padded, has_audio=clip.has_audio)
            stat = target.stat()
            row.update(shard_bytes=stat.st_size, shard_mtime_ns=stat.st_mtime_ns)
        except ClipTooShort as exc:
            row.update(status="skipped", error=str(exc))
        except (ValueError, OSError, EOFError) as exc:  # PyAV's errors are OSError and ValueError subclasses
            if isinstance(exc, OSError) and exc.errno in MACHINE_ERRNOS:  # the same clip would fail again next time
                raise VidopsError(
                    f"{job.path}: extraction stopped: {os.strerror(exc.errno)} (not the clip's fault: free space,"
                    f" fix the permissions or the disk, then run it again)"
                ) from None
            row.update(status="error", error=getattr(exc, "strerror", None) or str(exc))
        rows.append(row)
    return rows


def _kept_shards(index_table: Path, shard_dir: Path) -> dict[str, dict[str, Any]]:
    """The index fields of each shard the last index lists as extracted and whose file is unchanged since (the same
    size and mtime, as DVC's state judges a file): their clips need no worker, which would open every shard to read its
    flags, a cost that weighs on a re-run (measured: benchmarks/README.md). A shard written anew, damaged or replaced
    has another size or mtime."""
    try:
        old = pd.read_csv(index_table, keep_default_na=False, dtype=str)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return {}  # no index yet, or one that cannot be read: every shard is opened once
    if not {"shard", "status", "padded", "has_audio", "shard_bytes", "shard_mtime_ns"} <= set(old.columns):
        return {}  # an index from before shards' sizes were kept
    kept, folder = {}, str(shard_dir)
    for row in records(old[old["status"] == "ok"], ["shard", "padded", "has_audio", "shard_bytes", "shard_mtime_ns"]):
        try:
            stat = os.stat(os.path.join(folder, row["shard"]))
        except OSError:
            continue
        if (str(stat.st_size), str(stat.st_mtime_ns)) == (row["shard_bytes"], row["shard_mtime_ns"]):
            kept[row["shard"]] = {
                "status": "ok",
                "error": "",
                "padded": row["padded"] == "True",
                "has_audio": row["has_audio"] == "True",
                "shard_bytes": stat.st_size,
                "shard_mtime_ns": stat.st_mtime_ns,
            }
    return kept


def _read_flags(shard: Path, row: dict[str, Any]) -> bool:
    """Copy an existing shard's flags into `row`; False (and the shard removed) when it is damaged."""
    try:
        old = read_arrays(shard, ["padded", "has_audio"])
        row.update(padded=bool(old["padded"]), has_audio=bool(old["has_audio"]))
        return True
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        shard.unlink()
        return False


def extract_features(
    dataset_dir: Path,
    accepted_table: Path,
    features_dir: Path,
    params: ExtractParams,
    progress: Progress | None = None,
    mapper: Mapper | None = None,
    captions: Path | None = None,
) -> FeatureSet:
    """Extract every accepted clip into `features_dir/clips/`, then write the index; drop shards of other params.

    Batches of `params.batch_size` clips go through `mapper` (default: `params.workers` processes, or this process when
    fewer than IN_PROCESS_CLIPS clips are left to extract). With `captions` (the accepted clips' CAPTIONS_FILE that
    validation writes), the extracted clips' captions go to `features_dir`/CAPTIONS_FILE.
    """
    manifest = read_catalog(accepted_table)
    if captions is not None and not captions.is_file():  # before any work
        raise VidopsError(f"{captions}: no captions of the accepted clips; run the validate stage first")
    caption_table = read_captions_csv(captions) if captions is not None else None
    labels = tuple(sorted(manifest["label"].unique()))
    (features_dir / INDEX).unlink(missing_ok=True)  # until the index below is whole again
    shard_dir = features_dir / SHARDS
    shard_dir.mkdir(parents=True, exist_ok=True)
    version = params_hash(params)
    root = str(dataset_dir)
    jobs = [
        ClipJob(
            path=os.path.join(root, row["path"]),
            shard=f"{row['sha256'][:20]}-{version}.npz",
            frames=int(row["frames"]),
            seed=_clip_seed(params.seed, row["sha256"]) if row["split"] == "train" else None,
            row={key: row[key] for key in ("path", "label", "group", "split", "sha256")},
        )
        for row in records(manifest, ["path", "label", "group", "split", "sha256", "frames"])
    ]
    kept = _kept_shards(features_dir / INDEX_TABLE, shard_dir)
    rows = {
        i: {**job.row, "shard": job.shard, **kept[job.shard], "reused": True}
        for i, job in enumerate(jobs)
        if job.shard in kept
    }
    todo = [i for i in range(len(jobs)) if i not in rows]
    batches = [todo[i : i + params.batch_size] for i in range(0, len(todo), params.batch_size)]
    work = [([jobs[i] for i in batch], params, str(shard_dir)) for batch in batches]
    mapper = mapper or (in_this_process if len(todo) < IN_PROCESS_CLIPS else in_processes)
    for batch, batch_rows in zip(batches, mapper(extract_batch, work, params.workers), strict=True):
        rows.update(zip(batch, batch_rows, strict=True))
        if progress:
            progress(len(rows), len(jobs))
    index = pd.DataFrame([rows[i] for i in range(len(jobs))], columns=list(INDEX_COLUMNS))
    write_csv(features_dir / INDEX_TABLE, index)
    # written for every task (no rows for one without captions), as validation writes the accepted clips': the
    # features are whole when it and the index are there
    captions_table = (
        pd.DataFrame(columns=list(CAPTION_COLUMNS))
        if caption_table is None
        else extracted_captions(caption_table, index)
    )
    write_csv(features_dir / CAPTIONS_FILE, captions_table)
    for stale in set(p.name for p in shard_dir.glob("*.npz")) - set(index["shard"]):
        (shard_dir / stale).unlink()  # another params version, or a clip no longer accepted
    usable = index[index["status"] == "ok"]
    clips = {split: int((usable["split"] == split).sum()) for split in SPLITS}
    write_json(
        features_dir / INDEX,
        {"labels": list(labels), "params": params.model_dump(mode="json"), "params_hash": version, "clips": clips},
    )
    return FeatureSet(
        features_dir,
        labels,
        clips,
        int((~index["reused"] & (index["status"] == "ok")).sum()),
        int(index["reused"].sum()),
        int((index["status"] != "ok").sum()),
    )


def extracted_captions(captions: pd.DataFrame, index: pd.DataFrame) -> pd.DataFrame:
    """The `captions` (path, caption) of the clips the `index` holds as extracted, each path as the index's."""
    return captions.loc[captions["path"].isin(set(index.loc[index["status"] == "ok", "path"])), list(CAPTION_COLUMNS)]


def _clip_seed(seed: int, sha256: str) -> int:
    return int(hashlib.sha256(f"{seed}:{sha256}".encode()).hexdigest()[:8], 16)


def usable_rows(features_dir: Path, split: str) -> pd.DataFrame:
    """The index rows (path, label, shard, ...) of one split's clips whose extraction succeeded."""
    if not (features_dir / INDEX).is_file():
        raise VidopsError(f"{features_dir / INDEX}: no extracted features; run the extract stage first")
    index = pd.read_csv(features_dir / INDEX_TABLE, keep_default_na=False)
    return index[(index["status"] == "ok") & (index["split"] == split)]

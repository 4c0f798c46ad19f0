"""`vidops bench scale`: how vidops's cost grows with the number of clips.

Three parts, each against an anchor or a smaller size measured in the same run:
  near-duplicates: 100,000 synthetic perceptual hashes (clustered, as a dataset's are, with
      planted near pairs) checked by multi-index hashing and by the pairwise scan it replaced;
      the same pairs, and the ratio;
  checks: the derived checks and the Great Expectations suite on synthetic manifests of
      1,000 to 100,000 rows (no probing): seconds per thousand rows and the growth exponent;
  stages: validate and extract, through `flows.stages`, of generated datasets of N = 250,
      1,000 and 4,000 clips over 50 classes (one pool of clips, hard-linked): seconds per
      clip at each N, the growth exponent (the slope of log time over log N), and the re-run
      after adding 1% of new clips against the first run.
The growth exponent of a linear stage is 1; above ~1.15 between 1,000 and 4,000, something grows faster than the data.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from vidops.components.hashing import near_pairs, pairwise
from vidops.components.layout import Layout
from vidops.components.params import GenerateParams, Params, Task, load_params

TASK: Task = "classification"
CLASSES = 50
SIZES = (250, 1000, 4000)
ADDED = 0.01  # the incremental re-run: this fraction of new clips joins the largest dataset
HASHES = 100_000
MANIFEST_ROWS = (1_000, 10_000, 100_000)
# small clips: what is measured is how the cost grows, not a clip's own cost
OVERRIDES = ["extract.classification.size=32", "extract.classification.frames=8"]
POOL = GenerateParams(clips_per_class=1, size=48, fps=25, duration_s=1.0)
T = TypeVar("T")


@dataclass
class Scale:
    """The run's figures."""

    hashes: tuple[float, float, int] = (0.0, 0.0, 0)  # multi-index s, pairwise s, pairs found (the same by both)
    checks: dict[int, float] = field(default_factory=dict)  # manifest rows -> seconds
    stages: dict[str, dict[int, float]] = field(default_factory=dict)  # stage -> N -> seconds
    rerun: dict[str, Rerun] = field(default_factory=dict)  # stage -> the re-run after adding ADDED


@dataclass(frozen=True)
class Rerun:
    """A stage's re-run after new clips joined: its seconds, the clips it worked on, and those it reused."""

    seconds: float
    done: int
    reused: int


def sizes(largest: int | None) -> tuple[int, ...]:
    """The dataset sizes for a largest one of `largest` clips: a sixteenth, a quarter and all (default SIZES)."""
    return SIZES if largest is None else (max(2, largest // 16), max(4, largest // 4), max(8, largest))


def run(workdir: Path, sizes: tuple[int, ...] = SIZES) -> Scale:
    """Every part; the pool of clips is generated once into `workdir` and kept."""
    scale = Scale()
    scale.hashes = near_duplicates(HASHES)
    scale.checks = checks(MANIFEST_ROWS)
    scale.stages, scale.rerun = stages(workdir.resolve(), sizes)
    return scale


def clustered_hashes(n: int, seed: int = 0) -> np.ndarray:
    """`n` 192-bit hashes (uint64 [n, 3]) as a dataset's look: clusters of a hundred (a class, a scene) 10 to 40 bits
    from their centre, and one in fifty a near copy (1 to 6 bits) of another."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2**64, (max(1, n // 100), 3), dtype=np.uint64)
    words = centres[rng.integers(len(centres), size=n)] ^ _flips(rng, n, 10, 40)
    copies = rng.random(n) < 0.02
    words[copies] = words[rng.integers(n, size=int(copies.sum()))] ^ _flips(rng, int(copies.sum()), 1, 6)
    return words


def _flips(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """Per row, a mask of between `low` and `high` set bits out of 192, as three uint64 words."""
    bits = np.zeros((n, 192), np.uint8)
    for row, k in enumerate(rng.integers(low, high + 1, n)):
        bits[row, rng.choice(192, k, replace=False)] = 1
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64)


def near_duplicates(n: int, max_bits: int = 6) -> tuple[float, float, int]:
    """Seconds of multi-index hashing and of the pairwise scan over `n` clustered hashes; they must find the same pairs."""
    words = clustered_hashes(n)
    start = time.perf_counter()
    found = near_pairs(words, max_bits)
    fast = time.perf_counter() - start
    start = time.perf_counter()
    expected = pairwise(words, max_bits)
    slow = time.perf_counter() - start
    if not (np.array_equal(found[0], expected[0]) and np.array_equal(found[1], expected[1])):
        raise AssertionError(f"multi-index hashing found {len(found[0])} pairs, the pairwise scan {len(expected[0])}")
    return fast, slow, len(found[0])


def checks(rows: tuple[int, ...]) -> dict[int, float]:
    """Seconds of the derived checks and the suite on a synthetic manifest of each size (the first, small, warms GE up)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    from vidops.components import validation

    settings = load_params(None, OVERRIDES).validation
    validation.run_suite(validation.derive_checks(synthetic_manifest(100), settings), validation.suite(settings))  # GE's imports, first context
    timed = {}
    for n in rows:
        manifest = synthetic_manifest(n)
        start = time.perf_counter()
        validation.run_suite(validation.derive_checks(manifest, settings), validation.suite(settings))
        timed[n] = time.perf_counter() - start
    return timed


def synthetic_manifest(n: int, seed: int = 0) -> pd.DataFrame:
    """A catalog manifest of `n` probed clips, as `catalog.build_catalog` writes it, with one in a hundred flawed."""
    from vidops.components.catalog import MANIFEST_COLUMNS

    rng = np.random.default_rng(seed)
    labels = [f"class_{i % CLASSES:02d}" for i in range(n)]
    probed = {"size_bytes": 70_000, "mtime_ns": 1, "readable": True, "error": None, "container": "mov,mp4,m4a,3gp,3g2,mj2",
              "video_streams": 1, "video_codec": "h264", "pix_fmt": "yuv420p", "width": 96, "height": 96, "rotation": 0,
              "fps_nominal": 25.0, "fps_average": 25.0, "vfr": False, "duration_s": 2.0, "frames_stream": 50, "frames": 50,
              "keyframe_interval": 50, "audio_codec": "aac", "sample_rate": 16000, "channels": 1, "audio_duration_s": 2.0,
              "av_diff_s": 0.0, "decode_error": None}  # fmt: skip
    manifest = pd.DataFrame([probed] * n, columns=list(MANIFEST_COLUMNS))
    manifest["path"] = [f"{label}/clip_{i:06d}.mp4" for i, label in enumerate(labels)]
    manifest["label"], manifest["group"], manifest["split"] = labels, manifest["path"].str.removesuffix(".mp4"), ""
    manifest["sha256"] = [f"{a:016x}{b:016x}" for a, b in rng.integers(0, 2**63, (n, 2))]
    manifest["phash"] = ["".join(f"{w:016x}" for w in words) for words in clustered_hashes(n, seed)]
    flawed = rng.random(n) < 0.01
    manifest.loc[flawed, "fps_average"] = 5.0
    return manifest.infer_objects()


def stages(workdir: Path, sizes: tuple[int, ...]) -> tuple[dict[str, dict[int, float]], dict[str, Rerun]]:
    """Validate and extract each size's dataset in a fresh project; then the largest again after adding ADDED new clips."""
    from vidops.flows import stages as stage

    params = load_params(None, OVERRIDES)
    largest = max(sizes)
    added = max(1, round(ADDED * largest))
    pool = _pool(workdir / "pool", largest + added)
    classes = min(CLASSES, max(2, min(sizes) // 5))  # 50, unless the smallest dataset would leave a class short of clips
    timed: dict[str, dict[int, float]] = {"validate": {}, "extract": {}}
    rerun: dict[str, Rerun] = {}
    for n in sizes:
        layout = _project(workdir / f"n{n}", params, pool[:n], classes)
        timed["validate"][n], _ = _timed(stage.validate_dataset, layout, params)
        timed["extract"][n], _ = _timed(stage.extract_features, layout, params)
        if n == largest:  # the same project, ADDED more clips: only they should cost anything
            _link(pool[n : n + added], layout.raw(params.datasets.of(TASK)), classes)
            seconds, validated = _timed(stage.validate_dataset, layout, params)
            rerun["validate"] = Rerun(seconds, validated.probed, validated.reused)
            seconds, extracted = _timed(stage.extract_features, layout, params)
            rerun["extract"] = Rerun(seconds, extracted.extracted, extracted.reused)
    return timed, rerun


def _timed(stage: Callable[[Layout, Params, Task], T], layout: Layout, params: Params) -> tuple[float, T]:
    """Seconds of one stage on the project, and what it returned."""
    start = time.perf_counter()
    result = stage(layout, params, TASK)
    return time.perf_counter() - start, result


def _pool(folder: Path, n: int) -> list[Path]:
    """`n` generated clips (7 motions, generated once and kept), in a fixed order that mixes the motions."""
    from vidops.components.generate import KINDS, MARKER, generate_dataset

    per_class = math.ceil(n / len(KINDS[TASK].labels))
    if not (folder / MARKER).is_file() or len(list(folder.glob("*/*.mp4"))) < per_class * len(KINDS[TASK].labels):
        shutil.rmtree(folder, ignore_errors=True)
        generate_dataset(folder, TASK, POOL.model_copy(update={"clips_per_class": per_class}))
    clips = sorted(folder.glob("*/*.mp4"), key=lambda p: (p.stem.rsplit("_", 1)[-1], p.parent.name))
    return clips[:n]


def _project(root: Path, params: Params, clips: list[Path], classes: int) -> Layout:
    """A fresh project whose dataset holds `clips` (hard links, no copies) under `classes` labels."""
    shutil.rmtree(root, ignore_errors=True)
    layout = Layout(root)
    _link(clips, layout.raw(params.datasets.of(TASK)), classes)
    return layout


def _link(clips: list[Path], dataset: Path, classes: int) -> None:
    """Hard-link `clips` into `dataset` as <label>/<clip>, spreading them over `classes` labels by their order."""
    present = sum(1 for _ in dataset.glob("*/*.mp4")) if dataset.is_dir() else 0
    for i, clip in enumerate(clips, start=present):
        target = dataset / f"class_{i % classes:02d}" / f"{clip.parent.name}_{clip.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(clip, target)


def exponent(timed: dict[int, float], low: int, high: int) -> float:
    """The slope of log seconds over log N between two sizes: 1 for a linear cost, 2 for a quadratic one."""
    return math.log(timed[high] / timed[low]) / math.log(high / low)


def report(scale: Scale) -> str:
    fast, slow, pairs = scale.hashes
    lines = [
        f"near-duplicates, {HASHES:,} hashes: multi-index {fast:.2f} s, pairwise scan {slow:.1f} s "
        f"({fast / slow:.4f}x, the same {pairs:,} pairs)",
    ]
    sizes = sorted(scale.checks)
    per_thousand = ", ".join(f"{n:,} rows {1000 * scale.checks[n] / n:.3f} s" for n in sizes)
    lines.append(f"checks (derived + GE suite), per 1,000 rows: {per_thousand}; growth exponent "
                 f"{exponent(scale.checks, sizes[-2], sizes[-1]):.2f} ({sizes[-2]:,} -> {sizes[-1]:,})")  # fmt: skip
    for name, timed in scale.stages.items():
        ns = sorted(timed)
        per_clip = ", ".join(f"N={n:,} {1000 * timed[n] / n:.1f} ms" for n in ns)
        growth = ", ".join(f"{exponent(timed, a, b):.2f} ({a:,} -> {b:,})" for a, b in zip(ns, ns[1:], strict=False))
        lines.append(f"{name}: per clip {per_clip}; growth exponent {growth}")
        if name in scale.rerun:
            again = scale.rerun[name]
            lines.append(f"{name} after adding {ADDED:.0%} new clips to N={ns[-1]:,}: {again.seconds:.1f} s, "
                         f"{again.seconds / timed[ns[-1]]:.3f}x the first run ({again.done} clips done, {again.reused:,} reused)")  # fmt: skip
    return "\n".join(lines)

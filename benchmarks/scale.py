"""`vidops bench scale`: how vidops's cost grows with the number of clips.

The parts, each against an anchor or a smaller size measured in the same run:
  near-duplicates: 100,000 synthetic perceptual hashes (clustered, as a dataset's are, with
      planted near pairs) checked by multi-index hashing and by the pairwise scan, the anchor;
      the same pairs, and the ratio;
  checks: the derived checks and the Great Expectations suite on synthetic manifests of
      1,000 to 100,000 rows (no probing): seconds per thousand rows and the growth exponent;
  stages: validate and extract, through `flows.stages`, of generated datasets of N = 250,
      1,000 and 4,000 clips over 50 classes (one pool of clips, hard-linked): seconds per clip
      at each N, the growth exponent (the slope of log time over log N), and the re-run
      after adding 1% of new clips against the first run;
  versions: `dvc add`, `dvc push` to the project's S3 (SeaweedFS) and `dvc pull` into a fresh clone
      of the same datasets (copies of the pool's clips: a user's are files of their own), through
      `components.versioning`: seconds per thousand clips, the growth exponent, the add and push
      after adding 1%, and the largest push with other DVC --jobs;
  models: on the same projects, the classifier's training input over an epoch streamed within a
      memory budget (examples per second, peak memory against the budget; at the largest also
      `auto` and held in memory, the anchor), then evaluate and the gate of a small model;
  UCF101-shaped: a few hundred real-sized clips (320x240 MPEG-4 Part 2 in AVI, 7 s; --ucf101-clips)
      validated, extracted, added and pushed, then each again with nothing new (a re-run's fixed part)
      and after 1% more join (the data path's re-run against its first run), and from their cost per
      clip projections for UCF101 and Kinetics-400 on this machine and on 8 Dask workers.
The growth exponent of a linear stage is 1; above ~1.15 between 1,000 and 4,000, something grows faster than the
data. This module runs the parts and prints the report; the versions part is in scale_data, the training input in
scale_input, and the generated projects they share in scale_projects.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from vidops.benchmarks.scale_data import Versions, _dvc_project, _version_again, versions
from vidops.benchmarks.scale_input import InputRun, training_input
from vidops.benchmarks.scale_projects import (
    ADDED,
    CLASSES,
    OVERRIDES,
    TASK,
    Rerun,
    _place,
    _pool,
    _project,
    _seconds,
    _timed,
)
from vidops.components.hashing import near_pairs, pairwise
from vidops.components.layout import Layout
from vidops.components.params import load_params

SIZES = (250, 1000, 4000)
HASHES = 100_000
MANIFEST_ROWS = (1_000, 10_000, 100_000)
SMALL_MODEL = ["train.classification.filters=[4, 8]", "train.classification.epochs=1"]
UCF_CLIPS, UCF_CLASSES = 300, 25  # the UCF101-shaped set: a few hundred real-sized clips


@dataclass
class Scale:
    """The run's figures."""

    hashes: tuple[float, float, int] = (0.0, 0.0, 0)  # multi-index s, pairwise s, pairs found (the same by both)
    checks: dict[int, float] = field(default_factory=dict)  # manifest rows -> seconds
    stages: dict[str, dict[int, float]] = field(default_factory=dict)  # stage -> N -> seconds
    rerun: dict[str, Rerun] = field(default_factory=dict)  # stage -> the re-run after adding ADDED
    versions: Versions | None = None  # dvc add, push and pull
    inputs: dict[str, InputRun] = field(default_factory=dict)  # "<cache> <N>" -> the training input's run
    ucf101: dict[str, float] = field(default_factory=dict)  # stage -> seconds per UCF101-shaped clip
    # stage -> the UCF101-shaped set's re-run after adding ADDED
    ucf101_rerun: dict[str, Rerun] = field(default_factory=dict)
    # stage -> seconds of its re-run with nothing new: its fixed part
    ucf101_idle: dict[str, float] = field(default_factory=dict)
    ucf101_clips: int = UCF_CLIPS


def sizes(largest: int | None) -> tuple[int, ...]:
    """The dataset sizes for a largest one of `largest` clips: a sixteenth, a quarter and all (default SIZES)."""
    return SIZES if largest is None else (max(2, largest // 16), max(4, largest // 4), max(8, largest))


def run(workdir: Path, sizes: tuple[int, ...] = SIZES, ucf101_clips: int = UCF_CLIPS) -> Scale:
    """Every part; the pools of clips are generated once into `workdir` and kept."""
    scale = Scale(ucf101_clips=ucf101_clips)
    scale.hashes = near_duplicates(HASHES)
    scale.checks = checks(MANIFEST_ROWS)
    scale.stages, scale.rerun = stages(workdir.resolve(), sizes)
    scale.versions = versions(workdir.resolve(), sizes)
    timed, scale.inputs = models(workdir.resolve(), sizes)
    scale.stages |= timed
    scale.ucf101, scale.ucf101_rerun, scale.ucf101_idle = ucf101(workdir.resolve(), ucf101_clips)
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
    """Seconds of multi-index hashing and of the pairwise scan over `n` clustered hashes; they must find the same
    pairs."""
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
    """Seconds of the derived checks and the suite on a synthetic manifest of each size (the first, small, warms GE
    up)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    from vidops.components import validation

    settings = load_params(None, OVERRIDES).validation
    # GE's imports, first context
    validation.run_suite(validation.derive_checks(synthetic_manifest(100), settings), validation.suite(settings))
    timed = {}
    for n in rows:
        manifest = synthetic_manifest(n)
        start = time.perf_counter()
        validation.run_suite(validation.derive_checks(manifest, settings), validation.suite(settings))
        timed[n] = time.perf_counter() - start
    return timed


def synthetic_manifest(n: int, seed: int = 0) -> pd.DataFrame:
    """A catalog manifest of `n` probed clips, as `catalog.build_catalog` writes it, with one in a hundred flawed."""
    from vidops.components.catalog import CATALOG_COLUMNS

    rng = np.random.default_rng(seed)
    labels = [f"class_{i % CLASSES:02d}" for i in range(n)]
    probed = {
        "size_bytes": 70_000,
        "mtime_ns": 1,
        "readable": True,
        "error": None,
        "container": "mov,mp4,m4a,3gp,3g2,mj2",
        "video_streams": 1,
        "video_codec": "h264",
        "pix_fmt": "yuv420p",
        "width": 96,
        "height": 96,
        "rotation": 0,
        "fps_nominal": 25.0,
        "fps_average": 25.0,
        "vfr": False,
        "duration_s": 2.0,
        "frames_stream": 50,
        "frames": 50,
        "keyframe_interval": 50,
        "audio_codec": "aac",
        "sample_rate": 16000,
        "channels": 1,
        "audio_duration_s": 2.0,
        "av_diff_s": 0.0,
        "decode_error": None,
    }
    manifest = pd.DataFrame([probed] * n, columns=list(CATALOG_COLUMNS))
    manifest["path"] = [f"{label}/clip_{i:06d}.mp4" for i, label in enumerate(labels)]
    manifest["label"], manifest["group"], manifest["split"] = labels, manifest["path"].str.removesuffix(".mp4"), ""
    manifest["sha256"] = [f"{a:016x}{b:016x}" for a, b in rng.integers(0, 2**63, (n, 2))]
    manifest["phash"] = ["".join(f"{w:016x}" for w in words) for words in clustered_hashes(n, seed)]
    flawed = rng.random(n) < 0.01
    manifest.loc[flawed, "fps_average"] = 5.0
    return manifest.infer_objects()


def stages(workdir: Path, sizes: tuple[int, ...]) -> tuple[dict[str, dict[int, float]], dict[str, Rerun]]:
    """Validate and extract each size's dataset in a fresh project; then the largest again after adding ADDED new
    clips."""
    from vidops.components import stages as stage

    params = load_params(None, OVERRIDES)
    largest = max(sizes)
    added = max(1, round(ADDED * largest))
    pool = _pool(workdir / "pool", largest + added)
    # 50, unless the smallest dataset would leave a class short of clips
    classes = min(CLASSES, max(2, min(sizes) // 5))
    timed: dict[str, dict[int, float]] = {"validate": {}, "extract": {}}
    rerun: dict[str, Rerun] = {}
    for n in sizes:
        layout = _project(workdir / f"n{n}", params, pool[:n], classes)
        timed["validate"][n], _ = _timed(stage.validate, layout, params)
        timed["extract"][n], _ = _timed(stage.extract, layout, params)
        if n == largest:  # the same project, ADDED more clips: only they should cost anything
            _place(pool[n : n + added], layout.raw(params.datasets.of(TASK)), classes)
            seconds, validated = _timed(stage.validate, layout, params)
            rerun["validate"] = Rerun(seconds, validated.probed, validated.reused)
            seconds, extracted = _timed(stage.extract, layout, params)
            rerun["extract"] = Rerun(seconds, extracted.extracted, extracted.reused)
    return timed, rerun


def report_versions(versions: Versions) -> list[str]:
    """The DVC part's lines: seconds per 1,000 clips and the growth exponent, the re-runs, the push by --jobs."""
    lines = [
        line
        for name, timed in versions.timed.items()
        for line in _series(name, timed, versions.rerun.get(name), per_thousand=True)
    ]
    pushed = versions.timed["dvc push"]
    largest = max(pushed)
    tried = "".join(f", {jobs} jobs {seconds:.1f} s" for jobs, seconds in sorted(versions.push_jobs.items()))
    lines.append(
        f"dvc push of N={largest:,} by --jobs: DVC's default ({4 * (os.cpu_count() or 1)}) "
        f"{pushed[largest]:.1f} s{tried}"
    )
    return lines


def models(workdir: Path, sizes: tuple[int, ...]) -> tuple[dict[str, dict[int, float]], dict[str, InputRun]]:
    """The training input, evaluate and the gate on each size's project as `stages` left it (the largest with its ADDED
    more clips). The input streamed (`cache: none`) within INPUT_BUDGET_MB at each size, and at the largest also as
    `auto` chooses and held in memory (the anchor); a small classifier trained for one epoch (the model's cost, not
    the data's: not timed), evaluated, registered and gated; then registered again and gated against itself as
    champion, both scored on the test clips."""
    from vidops.components import stages as stage

    params = load_params(None, [*OVERRIDES, *SMALL_MODEL])
    timed: dict[str, dict[int, float]] = {"training input, an epoch": {}, "evaluate": {}, "gate": {}}
    runs = {}
    for n in sizes:
        layout = Layout(workdir / f"n{n}")
        runs[f"none {n}"] = streamed = training_input(layout.features(TASK), "none")
        timed["training input, an epoch"][n] = streamed.clips / streamed.examples_per_s
        if n == max(sizes):
            runs[f"auto {n}"] = training_input(layout.features(TASK), "auto")
            runs[f"memory {n}"] = training_input(layout.features(TASK), "memory")
        stage.train(layout, params, TASK)
        timed["evaluate"][n], _ = _timed(stage.evaluate, layout, params)
        stage.register(layout, params, TASK)
        stage.promote(layout, params, TASK)  # the first version: champion
        stage.register(layout, params, TASK)
        timed["gate"][n], _ = _timed(stage.promote, layout, params)
    return timed, runs


def ucf101(workdir: Path, clips: int = UCF_CLIPS) -> tuple[dict[str, float], dict[str, Rerun], dict[str, float]]:
    """Seconds per clip of validate, extract (the classifier's default params), `dvc add` and `dvc push` on `clips`
    UCF101-shaped clips (benchmarks/extract.py: 320x240 MPEG-4 Part 2 in AVI, 7 s, a keyframe every 25 frames, MP3)
    over UCF_CLASSES labels, in a project of their own: real-sized clips, where the other parts' are small. Then each
    stage again after ADDED new clips joined: the re-run a user's dataset of such clips costs; and, before them, each
    again with nothing new: the re-run's fixed part, which a larger dataset's first run dilutes."""
    from vidops.benchmarks.extract import write_ucf101_clips
    from vidops.components import stages as stage
    from vidops.components import versioning
    from vidops.stack.seaweedfs import project_store

    params = load_params(None, [])
    added = max(1, round(ADDED * clips))
    pool = write_ucf101_clips(workdir / "ucf101-pool", clips + added)
    classes = min(UCF_CLASSES, max(2, clips // 12))
    layout = _project(workdir / "ucf101", params, pool[:clips], classes, copies=True)
    folder = layout.raw(params.datasets.of(TASK))
    per_clip = {"validate": _timed(stage.validate, layout, params)[0] / clips}
    per_clip["extract"] = _timed(stage.extract, layout, params)[0] / clips
    _dvc_project(layout.root)
    with project_store(layout):
        add, version = _seconds(versioning.add, layout.root, folder)
        per_clip["dvc add"], per_clip["dvc push"] = (
            add / clips,
            _seconds(versioning.push, layout.root, [version.dvc_file])[0] / clips,
        )
        idle = {
            "validate": _timed(stage.validate, layout, params)[0],
            "extract": _timed(stage.extract, layout, params)[0],
            "dvc add": _seconds(versioning.add, layout.root, folder)[0],
            "dvc push": _seconds(versioning.push, layout.root, [version.dvc_file])[0],
        }
        _place(pool[clips:], folder, classes, copies=True)
        seconds, validated = _timed(stage.validate, layout, params)
        rerun = {"validate": Rerun(seconds, validated.probed, validated.reused)}
        seconds, extracted = _timed(stage.extract, layout, params)
        rerun["extract"] = Rerun(seconds, extracted.extracted, extracted.reused)
        rerun |= _version_again(layout.root, folder)
    return per_clip, rerun, idle


# datasets projected from the UCF101-shaped clips' costs: clips, and each clip's cost against a UCF101 clip's (its
# length)
PROJECTED = {"UCF101": (13_320, 1.0), "Kinetics-400": (240_000, 10 / 7)}
PARALLEL = ("validate", "extract")  # the stages whose batches Dask spreads over workers
# 8 Dask workers of this machine's kind; a worker added does not add a whole worker's speed (`vidops bench extract`'s
# 1 -> 2 workers, benchmarks/README.md)
WORKERS, WORKER_EFFICIENCY = 8, 0.7


def projections(
    per_clip: dict[str, float], stages: dict[str, dict[int, float]], measured: int = UCF_CLIPS
) -> list[str]:
    """Hours of each stage for the PROJECTED datasets on this machine and on WORKERS Dask workers: the UCF101-shaped
    clips' seconds per clip, times the clips, times (N / measured N) ** (exponent - 1) with the stage's growth exponent
    between the two largest small-clip sizes (never below 1: what amortised there is not counted twice)."""
    lines = []
    for dataset, (n, weight) in PROJECTED.items():
        parts, here, spread = [], 0.0, 0.0
        for name, seconds in per_clip.items():
            ns = sorted(stages.get(name, {}))
            growth = max(1.0, exponent(stages[name], ns[-2], ns[-1])) if len(ns) > 1 else 1.0
            hours = seconds * weight * n * (n / measured) ** (growth - 1) / 3600
            wide = hours * 2 / (WORKERS * WORKER_EFFICIENCY) if name in PARALLEL else hours
            here, spread = here + hours, spread + wide
            parts.append(f"{name} {_duration(hours)} ({_duration(wide)})")
        lines.append(
            f"projected {dataset} ({n:,} clips): {', '.join(parts)}; in all {_duration(here)} here, "
            f"{_duration(spread)} on {WORKERS} Dask workers"
        )
    return lines


def _duration(hours: float) -> str:
    """`hours` as a person reads them: minutes under one hour (UCF101's stages take minutes), else hours."""
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h"


def exponent(timed: dict[int, float], low: int, high: int) -> float:
    """The slope of log seconds over log N between two sizes: 1 for a linear cost, 2 for a quadratic one."""
    return math.log(timed[high] / timed[low]) / math.log(high / low)


def _series(name: str, timed: dict[int, float], again: Rerun | None, per_thousand: bool = False) -> list[str]:
    """A stage's lines: its cost per clip (ms) or per 1,000 clips (s) at each N, the growth exponents, and its
    re-run."""
    ns = sorted(timed)
    costs = ", ".join(
        f"N={n:,} {1000 * timed[n] / n:.2f} s" if per_thousand else f"N={n:,} {1000 * timed[n] / n:.1f} ms" for n in ns
    )
    growth = ", ".join(f"{exponent(timed, a, b):.2f} ({a:,} -> {b:,})" for a, b in itertools.pairwise(ns))
    lines = [f"{name}, per {'1,000 clips' if per_thousand else 'clip'}: {costs}; growth exponent {growth}"]
    if again:
        lines.append(
            f"{name} after adding {ADDED:.0%} new clips to N={ns[-1]:,}: {again.seconds:.1f} s, "
            f"{again.seconds / timed[ns[-1]]:.3f}x the first run ({again.done} clips done, {again.reused:,} reused)"
        )
    return lines


def _data_path_rerun(timed: dict[str, dict[int, float]], rerun: dict[str, Rerun]) -> str | None:
    """The user's re-run after adding clips: every stage re-run at the largest N (validate, extract, dvc add, dvc push),
    together against their first run."""
    names = [name for name in rerun if name in timed]
    if not names:
        return None
    first = sum(timed[name][max(timed[name])] for name in names)
    again = sum(rerun[name].seconds for name in names)
    return (
        f"the data path ({' + '.join(names)}) after adding {ADDED:.0%} new clips: {again:.1f} s, "
        f"{again / first:.3f}x the first run's {first:.1f} s"
    )


def _fixed_part(idle: dict[str, float]) -> str:
    """The data path's re-run with nothing new: each stage's fixed cost (listing the dataset, reading its records, the
    GE suite, DVC's start and the remote's status), which a re-run pays whatever was added."""
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in idle.items())
    return f"UCF101-shaped, the data path again with nothing new: {sum(idle.values()):.1f} s ({parts})"


def report(scale: Scale) -> str:
    fast, slow, pairs = scale.hashes
    lines = [
        f"near-duplicates, {HASHES:,} hashes: multi-index {fast:.2f} s, pairwise scan {slow:.1f} s "
        f"({fast / slow:.4f}x, the same {pairs:,} pairs)",
    ]
    sizes = sorted(scale.checks)
    per_thousand = ", ".join(f"{n:,} rows {1000 * scale.checks[n] / n:.3f} s" for n in sizes)
    lines.append(
        f"checks (derived + GE suite), per 1,000 rows: {per_thousand}; growth exponent "
        f"{exponent(scale.checks, sizes[-2], sizes[-1]):.2f} ({sizes[-2]:,} -> {sizes[-1]:,})"
    )
    for name, timed in scale.stages.items():
        lines += _series(name, timed, scale.rerun.get(name))
    if scale.versions:
        lines += report_versions(scale.versions)
    every = scale.stages | (scale.versions.timed if scale.versions else {})  # stage -> N -> seconds, the DVC part's too
    reruns = scale.rerun | (scale.versions.rerun if scale.versions else {})
    if line := _data_path_rerun(every, reruns):
        lines.append(line)
    for name, run in scale.inputs.items():
        under = "under" if run.peak_mb < run.budget_mb else "OVER"
        lines.append(
            f"training input, cache {run.asked} at N={int(name.split()[-1]):,} ({run.clips:,} training clips): "
            f"fed {run.cache}, "
            f"{run.examples_per_s:,.0f} examples/s, peak {run.peak_mb:.1f} MB, {under} the {run.budget_mb} MB budget"
        )
    if scale.ucf101:
        n = scale.ucf101_clips
        lines.append(
            f"UCF101-shaped clips ({n:,}), per clip: "
            + ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in scale.ucf101.items())
        )
        for name, again in scale.ucf101_rerun.items():
            lines.append(
                f"UCF101-shaped {name} after adding {ADDED:.0%} new clips to {n:,}: {again.seconds:.1f} s, "
                f"{again.seconds / (scale.ucf101[name] * n):.3f}x the first run "
                f"({again.done} clips done, {again.reused:,} reused)"
            )
        if line := _data_path_rerun(
            {name: {n: seconds * n} for name, seconds in scale.ucf101.items()}, scale.ucf101_rerun
        ):
            lines.append("UCF101-shaped, " + line)
        if scale.ucf101_idle:
            lines.append(_fixed_part(scale.ucf101_idle))
        lines += projections(scale.ucf101, every, n)
    return "\n".join(lines)

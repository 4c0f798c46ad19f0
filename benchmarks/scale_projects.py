"""The projects `vidops bench scale` measures: a pool of generated clips, fresh projects of them, and the timing of a
stage."""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from vidops.components.layout import Layout
from vidops.components.params import GenerateParams, Params, Task

TASK: Task = "classification"
CLASSES = 50
ADDED = 0.01  # the incremental re-run: this fraction of new clips joins the largest dataset
# small clips: what is measured is how the cost grows, not a clip's own cost
OVERRIDES = ["extract.classification.size=32", "extract.classification.frames=8"]
POOL = GenerateParams(clips_per_class=1, size=48, fps=25, duration_s=1.0)
T = TypeVar("T")


@dataclass(frozen=True)
class Rerun:
    """A stage's re-run after new clips joined: its seconds, the clips it worked on, and those it reused."""

    seconds: float
    done: int
    reused: int


def _seconds(call: Callable[..., T], *args: object, **kwargs: object) -> tuple[float, T]:
    start = time.perf_counter()
    result = call(*args, **kwargs)
    return time.perf_counter() - start, result


def _timed(stage: Callable[[Layout, Params, Task], T], layout: Layout, params: Params) -> tuple[float, T]:
    """Seconds of one stage on the project, and what it returned."""
    return _seconds(stage, layout, params, TASK)


def _pool(folder: Path, n: int) -> list[Path]:
    """`n` generated clips (7 motions, generated once and kept), in a fixed order that mixes the motions."""
    from vidops.components.generate import MARKER, MOTIONS, generate_dataset

    per_class = math.ceil(n / len(MOTIONS))
    if not (folder / MARKER).is_file() or len(list(folder.glob("*/*.mp4"))) < per_class * len(MOTIONS):
        shutil.rmtree(folder, ignore_errors=True)
        generate_dataset(folder, TASK, POOL.model_copy(update={"clips_per_class": per_class}))
    clips = sorted(folder.glob("*/*.mp4"), key=lambda p: (p.stem.rsplit("_", 1)[-1], p.parent.name))
    return clips[:n]


def _project(root: Path, params: Params, clips: list[Path], classes: int, copies: bool = False) -> Layout:
    """A fresh project whose dataset holds `clips` under `classes` labels: hard links to the pool, or `copies`."""
    shutil.rmtree(root, ignore_errors=True)
    layout = Layout(root)
    _place(clips, layout.raw(params.datasets.of(TASK)), classes, copies)
    return layout


def _place(clips: list[Path], dataset: Path, classes: int, copies: bool = False) -> None:
    """Put `clips` into `dataset` as <label>/<clip>, spreading them over `classes` labels by their order: hard links,
    or `copies` where DVC versions the dataset. A user's clips are files of their own, and DVC (cache type copy)
    replaces a file that is a hard link by a copy of its cache's: new inodes, so each tool would hash every clip again
    on the re-run, which a user's dataset does not cost."""
    present = sum(1 for p in dataset.glob("*/*") if p.is_file()) if dataset.is_dir() else 0
    for i, clip in enumerate(clips, start=present):
        target = dataset / f"class_{i % classes:02d}" / f"{clip.parent.name}_{clip.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if copies:
            shutil.copyfile(clip, target)
        else:
            os.link(clip, target)

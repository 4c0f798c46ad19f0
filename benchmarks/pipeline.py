"""`vidops bench pipeline`: what Prefect costs the pipeline, and what its cache saves.

On the demo's data and params (generated once, kept in the workdir), three timed runs, each on a fresh
copy of the project (its own MLflow store and outputs):
  (a) the anchor: the stage functions of `components.stages` called in a plain loop (validate ->
      extract -> train -> evaluate -> register -> promote, for each task);
  (b) the same through the `training_pipeline` Prefect flow (the ephemeral API started
      before the clock does, as a running server would be);
  (c) the flow again on b's project, nothing changed: every stage comes from the cache.
It prints b/a (orchestration overhead) and c/b (an unchanged re-run against the first).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from vidops.components.layout import Layout
from vidops.components.params import Task, load_params

TASKS: tuple[Task, ...] = ("classification", "sync")


@dataclass(frozen=True)
class BenchConfig:
    clips_per_class: int | None = None  # None: the demo's (params.yaml's generate.<task>.clips_per_class)
    # None: the demo's; fewer makes a quicker, harsher measure (Prefect's cost is mostly fixed)
    epochs: int | None = None


@dataclass(frozen=True)
class Timings:
    plain: float
    prefect: float
    cached: float


def run(workdir: Path, config: BenchConfig) -> Timings:
    from vidops.components.generate import MARKER, generate_dataset

    overrides = [
        f"generate.{task}.clips_per_class={config.clips_per_class}" for task in TASKS if config.clips_per_class
    ]
    overrides += [f"train.{task}.epochs={config.epochs}" for task in TASKS if config.epochs]
    params = load_params(None, overrides)
    data = Layout(workdir.resolve() / "data-source")
    for task in params.tasks:
        dataset = data.raw(params.datasets.of(task))
        if not (dataset / MARKER).is_file():
            generate_dataset(dataset, task, params.generate.of(task))

    def fresh(name: str) -> Layout:
        layout = Layout(workdir.resolve() / name)
        shutil.rmtree(layout.root, ignore_errors=True)
        shutil.copytree(data.root / "data", layout.root / "data")
        (layout.root / "params.yaml").write_text(yaml.safe_dump(params.to_yaml_dict()))
        return layout

    plain = fresh("plain")
    flowed = fresh("prefect")
    from vidops.stack.profiles import activate

    activate(flowed)  # Prefect's ephemeral API keeps its database in the project; import Prefect after this
    from vidops.components import stages
    from vidops.flows.pipeline import training_pipeline

    _warm_up()
    start = time.perf_counter()
    for task in params.tasks:
        for stage in stages.STAGES.values():  # validate ... register, then the gate
            stage(plain, params, task)
    a = time.perf_counter() - start

    start = time.perf_counter()
    training_pipeline(root=str(flowed.root))
    b = time.perf_counter() - start
    start = time.perf_counter()
    training_pipeline(root=str(flowed.root))
    c = time.perf_counter() - start
    return Timings(a, b, c)


def _warm_up() -> None:
    """Start Prefect's API (and import what both sides import) before the clock starts."""
    from prefect import flow

    import vidops.components.layers  # noqa: F401  TensorFlow's import, paid by neither side

    flow(lambda: None, name="vidops-bench-warm-up")()


def report(t: Timings, config: BenchConfig) -> str:
    return "\n".join(
        [
            f"pipeline: both tasks, clips per class {config.clips_per_class or 'as the demo'}, "
            f"epochs {config.epochs or 'as the demo'}",
            "| | seconds | ratio | target |",
            "|---|---|---|---|",
            f"| a plain loop of the stage functions | {t.plain:.1f} | 1 | |",
            f"| b training_pipeline through Prefect | {t.prefect:.1f} | b/a {t.prefect / t.plain:.3f} | <= 1.15 |",
            f"| c the same flow again, unchanged | {t.cached:.1f} | c/b {t.cached / t.prefect:.3f} | <= 0.05 |",
        ]
    )

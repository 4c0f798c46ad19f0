"""Typed parameters: one pydantic model per params.yaml group, validated on load.

The per-task groups (`extract.<task>`, `train.<task>`, ...) get a field for each task, typed and defaulted by its spec
(components/tasks/<task>/). The defaults are the embedded profile's (a demo that trains in minutes on 2 cores); the
repository's params.yaml spells them out and a test keeps the two equal.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from vidops.components.errors import VidopsError

if TYPE_CHECKING:
    from vidops.components.tasks import TaskSpec

Task = str  # a task's name: one of the specs in components.tasks


class _Group(BaseModel):
    # strict: a string where a number belongs is an error, not a silent conversion
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _PerTask(_Group):
    """A group with one entry per task, `params.extract.of(task)`: `params_model` gives it a field per registered
    task."""

    def of(self, task: Task) -> Any:
        return getattr(self, task)


class GenerateParams(_Group):
    clips_per_class: int = Field(48, ge=1)
    seed: int = 0
    size: int = Field(96, ge=32, multiple_of=2)
    fps: int = Field(25, ge=1)
    duration_s: float = Field(2.0, gt=0)


class ValidationParams(_Group):
    min_duration_s: float = Field(0.5, ge=0)
    max_duration_s: float = Field(600.0, gt=0)
    min_fps: float = Field(10.0, gt=0)
    max_fps: float = Field(120.0, gt=0)
    min_width: int = Field(32, ge=1)
    min_height: int = Field(32, ge=1)
    max_width: int = Field(4096, ge=1)
    max_height: int = Field(4096, ge=1)
    frame_count_tolerance: float = Field(0.1, ge=0)
    require_audio: bool = False  # the sync task always requires it
    warn_av_diff: bool = True  # warn of A/V durations apart where the task's extraction uses audio
    max_av_diff_s: float = Field(0.5, ge=0)  # A/V durations are apart when they differ by more than this many seconds
    max_av_diff_fraction: float = Field(0.2, ge=0, le=1)  # or by more than this fraction of the video's duration
    near_duplicate_bits: int = Field(6, ge=0, le=192)
    min_clips_per_class: int = Field(2, ge=2)
    probe_workers: int = Field(4, ge=1)
    test_fraction: float = Field(0.25, gt=0, lt=1)
    max_caption_words: int = Field(30, ge=1)  # a captioned task's longer caption is dropped, with a warning


class ExtractParams(_Group):
    sampler: Literal["uniform", "segments", "dense"] = "uniform"
    frames: int = Field(8, ge=2)  # per clip; for dense, per run of consecutive frames
    frame_interval: int = Field(1, ge=1)  # dense: step between the frames of a run
    runs: int = Field(1, ge=1)  # dense: runs of consecutive frames per clip
    size: int = Field(48, ge=16)
    resize: Literal["squash", "crop", "letterbox"] = "squash"
    short_clips: Literal["pad", "skip"] = "pad"  # pad repeats the last frame, and flags the clip
    audio: Literal["none", "logmel", "mfcc"] = "logmel"
    seed: int = 0  # for the segments sampler's random offsets
    workers: int = Field(2, ge=1)  # processes
    batch_size: int = Field(8, ge=1)  # clips per unit of work

    @model_validator(mode="before")
    @classmethod
    def _former_names(cls, data: Any) -> Any:
        """`clips`, the former name of `runs`, as versions registered before the rename carry it."""
        if isinstance(data, dict) and "clips" in data and "runs" not in data:
            data = {("runs" if key == "clips" else key): value for key, value in data.items()}
        return data


class FitParams(_Group):
    """How a model is fitted; a task's own train params extend it."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(2e-3, gt=0)  # the first epoch's; it falls along a cosine to 2 % of it by the last
    # epochs without a lower validation loss before stopping early (not before half the epochs)
    patience: int = Field(8, ge=1)
    # of each class's training groups, held out to drive early stopping
    validation_fraction: float = Field(0.15, ge=0, lt=1)
    augment: bool = True  # random changes to the training examples; never to evaluation's
    seed: int = 0
    deterministic: bool = False  # deterministic TensorFlow ops: repeatable, slower
    mixed_precision: bool = True  # float16 compute on a GPU; ignored on the CPU
    xla: bool = False  # compile the model with XLA on a GPU
    # the training input's clips: auto holds them in memory when they fit memory_budget_mb, else streams them from the
    # shards (the shuffle buffer sized to the budget); memory always holds them; disk streams the first epoch into one
    # file and reads it after (under TMPDIR, for shards on a slow or remote disk); none streams every epoch
    cache: Literal["auto", "memory", "disk", "none"] = "auto"
    # the most the training input holds: cached clips, shuffle buffer, batches in flight
    memory_budget_mb: int = Field(4096, ge=1)


class FrameEncoderParams(FitParams):
    """Fit params of a model that sees every frame through the swappable frame encoder (components/encoders.py)."""

    # small (the per-frame CNN of `filters`) | a Keras application: mobilenet_v3_small, efficientnet_b0
    encoder: str = "small"
    # a Keras application's: none | imagenet (from Keras's cache only) | path of a .weights.h5 file
    encoder_weights: str = "none"
    freeze_encoder: bool = False  # keep the loaded weights as they are (batch norm in inference mode)
    filters: tuple[int, ...] = (16, 32)  # the small encoder: one conv block each
    # the small encoder: the frame and its difference from the last through two CNNs of `filters`
    two_stream: bool = False


class ModelRegistryParams(_Group):
    model_name: str
    metric: str  # from reports/<task>/metrics.json; higher is better
    floor: float = Field(ge=0)  # a version scoring below this never becomes champion by itself


class RegistryParams(_PerTask):
    experiment: str = "vidops"
    min_improvement: float = Field(0.0, ge=0)  # a new version becomes champion only if it beats the champion by more
    # `dvc exp run`: register (and gate) each experiment's model, or only report its metrics
    register_experiments: bool = False


class RunnerParams(_Group):
    """How the Prefect flow spreads probing's and extraction's batches of clips (with probe_workers /
    extract.<task>.workers workers)."""

    kind: Literal["processes", "threads", "dask"] = "processes"
    address: str | None = None  # dask: an existing scheduler, e.g. tcp://10.0.0.5:8786; none: a local cluster


S3_URL = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"  # a bucket name, then an optional prefix
S3Url = Annotated[str, Field(pattern=S3_URL)]


class IngestParams(_Group):
    """`vidops run ingest`: clips landing under an S3 prefix join a dataset as a new DVC version."""

    task: Task | None = None  # the clips join datasets.<task>; None: the first of `tasks`
    landing: S3Url = "s3://vidops/landing"  # <landing>/<label>/<clip>
    processed: S3Url = "s3://vidops/processed"  # where landing objects go once the version holding them is pushed
    quarantine: S3Url = "s3://vidops/quarantine"  # where clips that failed validation go
    commit: bool = False  # in a git repository, commit the dataset's .dvc file with each new version


class Params(_Group):
    """Every group of params.yaml. The per-task groups get their fields from the task specs: `params_model()` is the
    class to build (its defaults are params.yaml's), and `load_params` the way to read one."""

    tasks: tuple[Task, ...] = Field(min_length=1)  # what `vidops run` trains; by default every task there is
    datasets: _PerTask  # the dataset each task learns from, by name: data/raw/<name>/
    generate: _PerTask  # of GenerateParams
    validation: ValidationParams = ValidationParams()
    extract: _PerTask  # of ExtractParams
    train: _PerTask  # of each task's own FitParams
    registry: RegistryParams
    runner: RunnerParams = RunnerParams()
    ingest: IngestParams = IngestParams()

    @property
    def ingest_task(self) -> Task:
        """The task whose dataset ingest adds clips to."""
        return self.ingest.task or self.tasks[0]

    def to_yaml_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def __reduce__(self) -> tuple[Any, ...]:
        # its class is made at run time (params_model), so pickle cannot name it: it travels as its values
        return (_validate, (self.to_yaml_dict(),))

    @model_validator(mode="after")
    def _tasks_can_work(self) -> Params:
        """Tasks that have no spec, gate metrics a task does not write, and combinations that would fail only after
        extraction (each task's `check`): caught on load, naming the keys."""
        from vidops.components import tasks  # the specs import this module's models

        known = tuple(type(self.train).model_fields)
        for key, name in [*(("tasks", name) for name in self.tasks), ("ingest.task", self.ingest_task)]:
            if name not in known:
                raise ValueError(f"{key}: no task {name!r}; known tasks: {', '.join(known)}")
        for name in known:
            task = tasks.spec(name)
            metric = self.registry.of(name).metric
            if metric not in task.metrics:
                raise ValueError(
                    f"registry.{name}.metric: {metric!r} is not a metric the {name} task writes for every dataset; "
                    f"gate on one of {', '.join(task.metrics)}"
                )
            task.check(name, self.extract.of(name), self.train.of(name))
        return self


def params_model() -> type[Params]:
    """`Params` with a field for each registered task in each per-task group, its default the task's own."""
    from vidops.components import tasks  # the specs import this module's models

    return _params_model(tasks.specs())


@functools.cache
def _params_model(specs: tuple[TaskSpec, ...]) -> type[Params]:
    def group(name: str, base: type[_Group], default: Any) -> Any:
        model = create_model(
            name, __base__=base, **{s.name: (type(default(s.defaults)), default(s.defaults)) for s in specs}
        )
        return (model, model())

    return create_model(
        "Params",
        __base__=Params,
        tasks=(tuple[Task, ...], Field(tuple(s.name for s in specs), min_length=1)),
        datasets=group("DatasetGroup", _PerTask, lambda d: d.dataset),
        generate=group("GenerateGroup", _PerTask, lambda d: d.generate),
        extract=group("ExtractGroup", _PerTask, lambda d: d.extract),
        train=group("TrainGroup", _PerTask, lambda d: d.train),
        registry=group("RegistryGroup", RegistryParams, lambda d: d.registry),
    )


class _DvcStyle(yaml.SafeDumper):
    """YAML as DVC's `exp run -S` writes it back (ruamel.yaml): block lists, nothing after a key whose value is null."""


_DvcStyle.add_representer(type(None), lambda dumper, _: dumper.represent_scalar("tag:yaml.org,2002:null", ""))


def dump_params(params: Params) -> str:
    """`params` as a params.yaml that `dvc exp run -S KEY=VALUE` changes by that value alone."""
    return yaml.dump(params.to_yaml_dict(), Dumper=_DvcStyle, sort_keys=False, default_flow_style=False)


def load_params(path: Path | None = None, overrides: Iterable[str] = ()) -> Params:
    """Read params.yaml (or the defaults when `path` is None) and apply `KEY.PATH=VALUE` overrides.

    What the file leaves out keeps its default, down to single keys: `extract.sync.frames`
    alone changes the sync frames and keeps the sync sampler's own default.
    """
    overrides = list(overrides)
    source = (str(path) if path else "defaults") + (" (with overrides)" if overrides else "")
    data = _merge(params_model()().to_yaml_dict(), _read_yaml(path) if path else {})
    for item in overrides:
        _apply_override(data, item)
    try:
        return _validate(data)
    except ValidationError as exc:
        raise VidopsError(f"{source}: {_describe(exc)}") from None


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` laid over `base`, group by group."""
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def _validate(data: dict[str, Any]) -> Params:
    # YAML lists arrive as lists; strict tuples want tuples, so convert only those.
    return params_model().model_validate(_lists_to_tuples(data))


def _lists_to_tuples(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists_to_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(value)
    return value


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise VidopsError(f"{path}: no such params file") from None
    except yaml.YAMLError as exc:
        raise VidopsError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise VidopsError(f"{path}: expected a mapping of params groups, got {type(data).__name__}")
    return data


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise VidopsError(f"override {item!r}: expected KEY.PATH=VALUE, e.g. train.classification.epochs=2")
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise VidopsError(f"override {item!r}: {part} is not a group")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise VidopsError(
            f"override {item!r}: {raw!r} is not a value YAML can read ({str(exc).splitlines()[0]})"
        ) from None
    node[leaf] = _number(value)


def _number(value: Any) -> Any:
    """YAML 1.1 reads `1e-3` (no dot) as a string; a user typing it means the number."""
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value):
        return float(value)
    return value


RENAMED = {"clips": "runs"}  # keys of an older params.yaml, and their names now


def _describe(exc: ValidationError) -> str:
    """One line per problem, each naming the dotted key."""
    parts = []
    for err in exc.errors():
        if not err["loc"] and err["type"] == "value_error":  # a cross-key check: its message names the keys
            parts.append(str(err["ctx"]["error"]))
            continue
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] == "extra_forbidden" and (renamed := RENAMED.get(str(err["loc"][-1]))):
            what = f"renamed to {renamed}"
        parts.append(f"{key}: {what}")
    return "; ".join(parts)

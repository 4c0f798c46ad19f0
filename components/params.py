"""Typed parameters: one pydantic model per params.yaml group, validated on load.

The defaults here are the embedded profile's (a demo that trains in minutes on 2 cores);
the repository's params.yaml spells them out and a test keeps the two equal.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.errors import VidopsError

Task = Literal["classification", "sync"]


class _Group(BaseModel):
    # strict: a string where a number belongs is an error, not a silent conversion
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DatasetParams(_Group):
    name: str = "demo"
    test_fraction: float = Field(0.25, gt=0, lt=1)


class GenerateParams(_Group):
    task: Task = "classification"
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
    require_audio: bool = False
    max_av_diff_s: float = Field(0.5, ge=0)
    near_duplicate_bits: int = Field(6, ge=0, le=192)
    min_clips_per_class: int = Field(2, ge=2)
    probe_workers: int = Field(4, ge=1)


class ExtractParams(_Group):
    sampler: Literal["uniform", "segments", "dense"] = "uniform"
    frames: int = Field(8, ge=2)  # per clip; for dense, per run of consecutive frames
    frame_interval: int = Field(1, ge=1)  # dense: step between the frames of a run
    clips: int = Field(1, ge=1)  # dense: runs per clip
    size: int = Field(48, ge=16)
    resize: Literal["squash", "crop", "letterbox"] = "squash"
    short_clips: Literal["pad", "skip"] = "pad"  # pad repeats the last frame, and flags the clip
    audio: Literal["none", "logmel", "mfcc"] = "logmel"
    seed: int = 0  # for the segments sampler's random offsets
    workers: int = Field(2, ge=1)  # processes
    batch_size: int = Field(8, ge=1)  # clips per unit of work


class ClassifierParams(_Group):
    temporal: Literal["conv", "lstm", "2plus1d"] = "conv"
    filters: tuple[int, ...] = (8, 16, 32)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=1)
    learning_rate: float = Field(2e-3, gt=0)  # halved whenever the loss stalls for patience / 2 epochs
    patience: int = Field(8, ge=1)  # epochs without a lower training loss before stopping early
    seed: int = 0
    deterministic: bool = False  # deterministic TensorFlow ops: repeatable, slower
    mixed_precision: bool = True  # float16 compute on a GPU; ignored on the CPU
    xla: bool = False  # compile the model with XLA on a GPU


class TrainParams(_Group):
    classifier: ClassifierParams = ClassifierParams()


class RegistryParams(_Group):
    experiment: str = "vidops"
    model_name: str = "vidops-classifier"
    metric: str = "accuracy"
    min_improvement: float = Field(0.0, ge=0)


class Params(_Group):
    dataset: DatasetParams = DatasetParams()
    generate: GenerateParams = GenerateParams()
    validation: ValidationParams = ValidationParams()
    extract: ExtractParams = ExtractParams()
    train: TrainParams = TrainParams()
    registry: RegistryParams = RegistryParams()

    def to_yaml_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def load_params(path: Path | None = None, overrides: Iterable[str] = ()) -> Params:
    """Read params.yaml (or the defaults when `path` is None) and apply `KEY.PATH=VALUE` overrides."""
    source = str(path) if path else "defaults"
    data: dict[str, Any] = _read_yaml(path) if path else {}
    for item in overrides:
        _apply_override(data, item)
        source = f"{source} (with overrides)"
    try:
        return _validate(data)
    except ValidationError as exc:
        raise VidopsError(f"{source}: {_describe(exc)}") from None


def _validate(data: dict[str, Any]) -> Params:
    # YAML lists arrive as lists; strict tuples want tuples, so convert only those.
    return Params.model_validate(_lists_to_tuples(data))


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
        raise VidopsError(f"override {item!r}: expected KEY.PATH=VALUE, e.g. train.classifier.epochs=2")
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise VidopsError(f"override {item!r}: {part} is not a group")
    node[leaf] = yaml.safe_load(raw)


def _describe(exc: ValidationError) -> str:
    """One line per problem, each naming the dotted key."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        what = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{key}: {what}")
    return "; ".join(parts)

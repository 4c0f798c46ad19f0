"""Validation: a Great Expectations suite over the manifest; failing clips are quarantined, never touched.

Great Expectations is used here and nowhere else, so its API (1.x) stays behind this module.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.catalog import assign_splits, build_catalog
from components.errors import VidopsError
from components.io import write_csv, write_json
from components.params import ValidationParams

QUARANTINE_COLUMNS = ["path", "label", "expectation", "reason"]
ACCEPTED = "accepted.csv"  # the clips that passed, with their split: what extraction reads


@dataclass(frozen=True)
class ValidationSummary:
    clips: int
    accepted: int
    quarantined: int
    labels: tuple[str, ...]
    manifest: Path  # every clip, with its probe
    accepted_manifest: Path  # the clips that passed, with their split; extraction reads this
    quarantine: Path  # one row per failed expectation per clip, with a reason
    report: Path


def validate_dataset(dataset_dir: Path, catalog_dir: Path, checks: ValidationParams, test_fraction: float) -> ValidationSummary:
    """Catalog `dataset_dir`, run the suite, write manifest, quarantine, accepted list and report under `catalog_dir`.

    Raises VidopsError when what is left cannot train a model (a class below its minimum).
    """
    manifest = build_catalog(dataset_dir)
    failures, outcomes = _run_suite(manifest, checks)
    quarantine = pd.DataFrame(failures, columns=QUARANTINE_COLUMNS)
    accepted = manifest[~manifest["path"].isin(quarantine["path"])]
    counts = accepted["label"].value_counts()
    short = {label: int(counts.get(label, 0)) for label in sorted(manifest["label"].unique()) if counts.get(label, 0) < checks.min_clips_per_class}

    paths = {name: catalog_dir / name for name in ("manifest.csv", ACCEPTED, "quarantine.csv", "validation.json")}
    write_csv(paths["manifest.csv"], manifest)
    write_csv(paths["quarantine.csv"], quarantine)
    write_json(paths["validation.json"], {
        "dataset": str(dataset_dir), "clips": len(manifest), "accepted": len(accepted),
        "quarantined": int(quarantine["path"].nunique()), "expectations": outcomes, "classes_below_minimum": short,
    })  # fmt: skip
    if short or len(counts) < 2:
        paths[ACCEPTED].unlink(missing_ok=True)  # an old accepted list must not outlive a failed validation
        why = ", ".join(f"{label} has {n}" for label, n in short.items()) or f"only {len(counts)} class left"
        raise VidopsError(
            f"{dataset_dir}: not enough valid clips to train: {why} (need {checks.min_clips_per_class} per class, "
            f"at least 2 classes); see {paths['quarantine.csv']}"
        )
    write_csv(paths[ACCEPTED], assign_splits(accepted, test_fraction))
    return ValidationSummary(
        clips=len(manifest), accepted=len(accepted), quarantined=int(quarantine["path"].nunique()),
        labels=tuple(sorted(counts.index)), manifest=paths["manifest.csv"], accepted_manifest=paths[ACCEPTED],
        quarantine=paths["quarantine.csv"], report=paths["validation.json"],
    )  # fmt: skip


def _expectations(checks: ValidationParams) -> list[tuple[str, dict[str, Any], str]]:
    """(expectation class, kwargs, reason template) for each check; `{value}` is the clip's offending value."""
    return [
        ("ExpectColumnValuesToBeInSet", {"column": "readable", "value_set": [True]}, "unreadable: {error}"),
        ("ExpectColumnValuesToNotBeNull", {"column": "video_codec"}, "no usable video stream"),
        ("ExpectColumnValuesToBeBetween", {"column": "duration_s", "min_value": checks.min_duration_s, "max_value": checks.max_duration_s},
         f"duration {{value:.2f}} s is outside [{checks.min_duration_s}, {checks.max_duration_s}] s"),
        ("ExpectColumnValuesToBeBetween", {"column": "fps", "min_value": checks.min_fps, "max_value": checks.max_fps},
         f"frame rate {{value:.2f}} fps is outside [{checks.min_fps}, {checks.max_fps}] fps"),
        ("ExpectColumnValuesToBeBetween", {"column": "width", "min_value": checks.min_width}, f"width {{value}} px is below {checks.min_width} px"),
        ("ExpectColumnValuesToBeBetween", {"column": "height", "min_value": checks.min_height}, f"height {{value}} px is below {checks.min_height} px"),
    ]  # fmt: skip


def _run_suite(manifest: pd.DataFrame, checks: ValidationParams) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """Run the suite; return one failure row per (clip, expectation) and one outcome per expectation."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe

    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = context.data_sources.add_pandas("manifest").add_dataframe_asset("clips").add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(gx.ExpectationSuite(name="clips"))
    reasons = []
    for name, kwargs, reason in _expectations(checks):
        suite.add_expectation(getattr(gxe, name)(**kwargs))
        reasons.append(reason)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="clips", data=batch, suite=suite))
    result = definition.run(
        batch_parameters={"dataframe": manifest},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["path"]},
    )
    by_path = manifest.set_index("path")
    failures, outcomes = [], []
    # results come back in the suite's order
    for outcome, reason in zip(result.results, reasons, strict=True):
        config = outcome.expectation_config
        column = config.kwargs["column"]
        bad = [hit["path"] for hit in outcome.result.get("unexpected_index_list") or []]
        outcomes.append({"expectation": config.type, "column": column, "success": bool(outcome.success), "unexpected": len(bad)})
        for path in bad:
            clip = by_path.loc[path]
            text = reason.format(value=clip[column], error=clip["error"])
            failures.append({"path": path, "label": clip["label"], "expectation": f"{config.type}({column})", "reason": text})
    return failures, outcomes

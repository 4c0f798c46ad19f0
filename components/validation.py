"""Validation: a Great Expectations suite over the catalog table; clips that fail are quarantined, never touched.

Facts that span several rows (duplicates, groups across splits) are computed here into
columns of the catalog table, so that every check is a GE expectation on a column, shown in
Data Docs. Each expectation is critical (the clip is quarantined) or a warning (reported,
kept). A captioned task's captions (the dataset's captions.csv) are checked the same way: each
clip's are summed up in columns of its row; a caption naming no clip is a finding of its own.
Great Expectations (1.x) is used in this module and nowhere else. Data Docs (components/data_docs.py) are vidops's own
static pages of the suite's results (GE's load their CSS and scripts from a CDN, and render
bare offline).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidops.components import hashing
from vidops.components.captions import accepted_captions, caption_orphans, dataset_captions, derive_caption_checks
from vidops.components.catalog import FINDING_COLUMNS, Catalog, assign_splits, build_catalog, read_catalog
from vidops.components.data_docs import SUITE, Check, Outcome, write_data_docs
from vidops.components.errors import VidopsError
from vidops.components.io import write_csv, write_json
from vidops.components.layout import ACCEPTED, CAPTIONS_FILE, CATALOG, FORMER_CATALOG, QUARANTINE, REPORT, WARNINGS
from vidops.components.parallel import Mapper, in_threads
from vidops.components.params import Params, Task, ValidationParams
from vidops.components.tasks import spec


@dataclass(frozen=True)
class ValidationSummary:
    clips: int
    accepted: int
    warned: int
    quarantined: int
    labels: tuple[str, ...]
    by_reason: dict[str, int]  # failed check -> clips
    probed: int  # files opened this time; the others kept their rows from the last catalog table
    reused: int
    catalog: Path  # every file: its probe, checks, status and split
    accepted_table: Path
    quarantine: Path
    report: Path
    data_docs: Path | None  # Data Docs' index.html

    def table(self) -> list[dict[str, Any]]:
        """The summary as rows (what, clips), for the CLI, MLflow and the Prefect UI."""
        rows = [
            {"what": k, "clips": v}
            for k, v in (("accepted", self.accepted), ("warned", self.warned), ("quarantined", self.quarantined))
        ]
        return rows + [{"what": f"failed {check}", "clips": n} for check, n in sorted(self.by_reason.items())]


def validate_dataset(
    dataset: Path,
    catalog_dir: Path,
    checks: ValidationParams,
    docs_dir: Path | None = None,
    min_classes: int = 2,
    mapper: Mapper = in_threads,
    captioned: bool = False,
) -> ValidationSummary:
    """Catalog `dataset`, run the suite, write the catalog table, findings, accepted list, the accepted clips' captions
    and report under `catalog_dir`.

    The previous catalog table there makes probing incremental; its batches go through `mapper`. Data Docs go to
    `docs_dir` when given. A `captioned` dataset's clips are checked with their captions (CAPTIONS_FILE; the file has
    no rows for another). Raises VidopsError when what is left cannot train a model (a class below its minimum), or
    captions it needs are not there.
    """
    captions = dataset_captions(dataset) if captioned else None  # read first: a missing file fails before any probing
    previous = previous_catalog(catalog_dir)
    catalog, table, findings = check_clips(dataset, checks, previous, docs_dir, mapper, captions)
    critical, warned = (
        set(table.loc[table["status"] == "quarantined", "path"]),
        set(table.loc[table["status"] == "warned", "path"]),
    )
    accepted = assign_splits(table[table["status"] != "quarantined"], checks.test_fraction)
    table.loc[accepted.index, "split"] = accepted["split"]

    paths = {name: catalog_dir / name for name in (CATALOG, ACCEPTED, CAPTIONS_FILE, QUARANTINE, WARNINGS, REPORT)}
    write_csv(paths[CATALOG], table)
    write_csv(paths[QUARANTINE], findings[findings["severity"] == "critical"])
    write_csv(paths[WARNINGS], findings[findings["severity"] == "warning"])
    counts = accepted["label"].value_counts()
    # "": a label folder a link leads out of, no class
    classes = sorted(label for label in table["label"].unique() if label)
    short = {label: int(counts.get(label, 0)) for label in classes if counts.get(label, 0) < checks.min_clips_per_class}
    summary = ValidationSummary(
        clips=len(table),
        accepted=len(accepted),
        warned=len(warned),
        quarantined=len(critical),
        labels=tuple(sorted(counts.index)),
        by_reason=findings.groupby("check")["path"].nunique().to_dict(),
        probed=catalog.probed,
        reused=catalog.reused,
        catalog=paths[CATALOG],
        accepted_table=paths[ACCEPTED],
        quarantine=paths[QUARANTINE],
        report=paths[REPORT],
        data_docs=docs_dir / "index.html" if docs_dir else None,
    )
    write_json(
        paths[REPORT],
        {
            "dataset": str(dataset),
            "clips": summary.clips,
            "accepted": summary.accepted,
            "warned": summary.warned,
            "quarantined": summary.quarantined,
            "by_reason": summary.by_reason,
            "classes_below_minimum": short,
        },
    )
    if short or len(counts) < min_classes:
        for stale in (ACCEPTED, CAPTIONS_FILE):  # an old accepted list must not outlive a failed validation
            paths[stale].unlink(missing_ok=True)
        why = ", ".join(f"{label} has {n}" for label, n in short.items()) or f"only {len(counts)} class left"
        raise VidopsError(
            f"{dataset}: not enough valid clips to train: {why} (need {checks.min_clips_per_class} per class, "
            f"at least {min_classes} {'classes' if min_classes > 1 else 'class'}); see {paths['quarantine.csv']}"
        )
    write_csv(paths[CAPTIONS_FILE], accepted_captions(captions, accepted, checks.max_caption_words))
    write_csv(paths[ACCEPTED], accepted)
    return summary


def previous_catalog(catalog_dir: Path) -> pd.DataFrame | None:
    """The last validation's catalog table in `catalog_dir` (or under its former name, manifest.csv), or None: what
    makes probing incremental."""
    for name in (CATALOG, FORMER_CATALOG):
        if (catalog_dir / name).is_file():
            return read_catalog(catalog_dir / name)
    return None


def validation_checks(params: Params, task: Task) -> ValidationParams:
    """The task's checks: a clip without sound is of no use to a task that needs audio (its spec says); a task whose
    extraction reads audio hears it stop early when the A/V durations are apart, which is worth a warning."""
    checks = params.validation
    uses_audio = params.extract.of(task).audio != "none"
    return checks.model_copy(
        update={
            "require_audio": checks.require_audio or spec(task).needs_audio,
            "warn_av_diff": checks.warn_av_diff and uses_audio,
        }
    )


def check_clips(
    dataset: Path,
    checks: ValidationParams,
    previous: pd.DataFrame | None = None,
    docs_dir: Path | None = None,
    mapper: Mapper = in_threads,
    captions: pd.DataFrame | None = None,
) -> tuple[Catalog, pd.DataFrame, pd.DataFrame]:
    """Probe and check every clip of `dataset`, with its `captions` (catalog.read_captions_csv's table) when given: its
    catalog, the catalog table with each clip's `status` (accepted, warned, quarantined), and the findings (one row per
    clip and failed check, and one per path that captions name and the dataset lacks). Data Docs go to `docs_dir` when
    given."""
    catalog = build_catalog(dataset, previous, checks.probe_workers, mapper)
    table = derive_checks(catalog.table, checks)
    if captions is not None:
        table = derive_caption_checks(table, captions, checks.max_caption_words)
    findings, outcomes = run_suite(table, suite(checks, captioned=captions is not None))
    orphans = caption_orphans(table, captions) if captions is not None else pd.DataFrame()
    if len(orphans):
        findings = pd.concat([findings, orphans], ignore_index=True)
    critical = set(findings.loc[findings["severity"] == "critical", "path"])
    warned = set(findings.loc[findings["severity"] == "warning", "path"]) - critical
    table["status"] = np.where(
        table["path"].isin(critical), "quarantined", np.where(table["path"].isin(warned), "warned", "accepted")
    )
    if docs_dir is not None:
        write_data_docs(docs_dir, dataset, table, findings, outcomes)
    return catalog, table, findings


def suite(checks: ValidationParams, captioned: bool = False) -> list[Check]:
    """The expectations, with thresholds from params.yaml; a `captioned` task's on its clips' captions too."""
    c = checks
    between = "ExpectColumnValuesToBeBetween"
    empty = "ExpectColumnValuesToBeNull"
    found = [
        Check(
            "readable",
            "ExpectColumnValuesToBeInSet",
            {"column": "readable", "value_set": [True]},
            "critical",
            "unreadable: {error}",
        ),
        Check(
            "one_video_stream",
            between,
            {"column": "video_streams", "min_value": 1, "max_value": 1},
            "critical",
            "{value} video streams; exactly one is needed",
        ),
        Check(
            "duration",
            between,
            {"column": "duration_s", "min_value": c.min_duration_s, "max_value": c.max_duration_s},
            "critical",
            f"duration {{value:.2f}} s is outside [{c.min_duration_s}, {c.max_duration_s}] s",
        ),
        Check(
            "fps",
            between,
            {"column": "fps_average", "min_value": c.min_fps, "max_value": c.max_fps},
            "critical",
            f"frame rate {{value:.2f}} fps is outside [{c.min_fps}, {c.max_fps}] fps",
        ),
        Check(
            "width",
            between,
            {"column": "width", "min_value": c.min_width, "max_value": c.max_width},
            "critical",
            f"width {{value}} px is outside [{c.min_width}, {c.max_width}] px",
        ),
        Check(
            "height",
            between,
            {"column": "height", "min_value": c.min_height, "max_value": c.max_height},
            "critical",
            f"height {{value}} px is outside [{c.min_height}, {c.max_height}] px",
        ),
        Check(
            "frame_count",
            between,
            {"column": "frame_count_error", "max_value": c.frame_count_tolerance},
            "critical",
            "{frames} frames where duration x fps says {expected_frames:.0f}: the container's count is wrong",
        ),
        Check(
            "duplicate",
            empty,
            {"column": "duplicate_of"},
            "critical",
            "byte-identical to {value} (same label): a duplicate",
        ),
        Check(
            "label_conflict",
            empty,
            {"column": "label_conflict"},
            "critical",
            "byte-identical to a clip labelled {value}: label conflict",
        ),
        Check(
            "group_leak",
            empty,
            {"column": "group_leak"},
            "critical",
            "group {group} is also in the {value} split: it would leak",
        ),
        Check(
            "near_duplicate", empty, {"column": "near_duplicate_of"}, "warning", "looks like {value} (perceptual hash)"
        ),
    ]
    apart = (
        f"audio {{audio_duration_s:.2f}} s and video {{duration_s:.2f}} s differ by {{value:.2f}} s"
        f" (allowed: the lesser of {c.max_av_diff_s} s and {c.max_av_diff_fraction:.0%} of the video)"
    )
    if c.require_audio:
        found += [
            Check(
                "audio_present",
                "ExpectColumnValuesToNotBeNull",
                {"column": "audio_codec"},
                "critical",
                "no audio stream; this task needs audio",
            ),
            Check("av_sync", empty, {"column": "av_apart_s"}, "critical", apart),
        ]
    elif c.warn_av_diff:
        found.append(Check("av_sync", empty, {"column": "av_apart_s"}, "warning", apart))
    if captioned:  # the columns of derive_caption_checks
        found += [
            Check("no_caption", empty, {"column": "no_caption"}, "critical", "{value}"),
            Check(
                "empty_caption",
                empty,
                {"column": "empty_caption"},
                "warning",
                f"empty caption on {{value}} of {CAPTIONS_FILE}: dropped",
            ),
            Check(
                "long_caption",
                empty,
                {"column": "long_caption"},
                "warning",
                f"caption over {c.max_caption_words} words on {{value}} of {CAPTIONS_FILE}: dropped",
            ),
        ]
    return found


def derive_checks(table: pd.DataFrame, checks: ValidationParams) -> pd.DataFrame:
    """Add the derived columns: frame-count error, A/V durations apart, and those that compare rows: duplicates,
    label conflicts, group leaks, near-duplicates."""
    out = table.copy()
    out["expected_frames"] = out["duration_s"] * out["fps_average"]
    out["frame_count_error"] = (out["frames"] - out["expected_frames"]).abs() / out["expected_frames"].clip(lower=1)
    # relative too: on a 1 s clip, audio 0.5 s short is half of it missing
    allowed = np.minimum(checks.max_av_diff_s, checks.max_av_diff_fraction * out["duration_s"])
    out["av_apart_s"] = out["av_diff_s"].where(out["av_diff_s"] > allowed)
    out["duplicate_of"] = out["label_conflict"] = out["group_leak"] = out["near_duplicate_of"] = None
    # by rows, not groups: linear in the clips
    shared = out[out["sha256"].notna() & out["sha256"].duplicated(keep=False)]
    for _, same in shared.groupby("sha256"):
        labels = set(same["label"])
        for index, row in same.iterrows():
            others = sorted(labels - {row["label"]})
            if others:
                out.at[index, "label_conflict"] = ", ".join(others)
            elif index != same.index[0]:
                out.at[index, "duplicate_of"] = same.iloc[0]["path"]
    given = out[out["split"].isin(["train", "test"])]
    both = given.groupby("group")["split"].transform("nunique") > 1
    out.loc[given.index[both & (given["split"] == "test")], "group_leak"] = "train"
    _mark_near_duplicates(out, checks.near_duplicate_bits)
    return out


def _hashed(table: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows with a whole perceptual hash, and each one's 192 bits as three 64-bit words."""
    rows = table[table["phash"].notna() & (table["phash"].astype(str).str.len() == 48)]
    return rows, np.array(
        [[int(h[i : i + 16], 16) for i in (0, 16, 32)] for h in rows["phash"]], dtype=np.uint64
    ).reshape(-1, 3)


def twins_in(landed: pd.DataFrame, existing: pd.DataFrame, max_bits: int) -> dict[str, str]:
    """Each landed clip (by path) that the dataset holds already: byte-identical to one of `existing`, or within
    `max_bits` of its perceptual hash; the reason, naming the twin. The clip already there keeps its place."""
    twins: dict[str, str] = {}
    by_sha = dict(zip(existing["sha256"], existing["path"], strict=True))
    old, old_words = _hashed(existing)
    new, new_words = _hashed(landed)
    again = set()  # under its own name, the same bytes: the clip landed again ("already in", for ingest), no twin
    for path, sha in zip(landed["path"], landed["sha256"], strict=True):
        if by_sha.get(sha) == path:
            again.add(path)
        elif sha in by_sha:
            twins[path] = f"byte-identical to {by_sha[sha]}, already in the dataset"
    identical = set(twins)
    # the landed hashes after the existing ones: a pair (i, j) of an existing i and a landed j is a candidate twin
    i, j = hashing.near_pairs(np.concatenate([old_words, new_words]), max_bits)
    keep = (i < len(old)) & (j >= len(old))
    i, j = i[keep], j[keep] - len(old)
    distance = np.bitwise_count(old_words[i] ^ new_words[j]).sum(axis=1)
    for n in np.argsort(distance, kind="stable")[::-1]:  # the nearest last, so it is the one kept
        path, twin = new["path"].iloc[j[n]], old["path"].iloc[i[n]]
        if path not in again and path not in identical and twin != path:
            twins[path] = f"looks like {twin} (perceptual hash), already in the dataset"
    return twins


def _mark_near_duplicates(table: pd.DataFrame, max_bits: int) -> None:
    """Set `near_duplicate_of` on each clip whose perceptual hash is within `max_bits` of an earlier, different clip."""
    rows, words = _hashed(table)
    shas = rows["sha256"].to_numpy()
    # by j, then i: each clip's earliest look-alike first
    for i, j in zip(*hashing.near_pairs(words, max_bits), strict=True):
        index = rows.index[j]
        if shas[j] != shas[i] and table.at[index, "near_duplicate_of"] is None:
            table.at[index, "near_duplicate_of"] = rows.iloc[i]["path"]


def run_suite(table: pd.DataFrame, checks: list[Check]) -> tuple[pd.DataFrame, list[Outcome]]:
    """Run the checks as one GE suite: one finding row per (clip, failed check), and each check's outcome."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # no docs site of GE's own (the default makes one in a temporary folder, and logs it): Data Docs are
    # write_data_docs'
    stores = InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
    context = gx.get_context(mode="ephemeral", project_config=DataContextConfig(store_backend_defaults=stores))
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("table")
        .add_dataframe_asset("clips")
        .add_batch_definition_whole_dataframe("all")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE))
    for check in checks:
        meta = {"check": check.name, "severity": check.severity, "reason": check.reason}
        suite.add_expectation(getattr(gxe, check.expectation)(**check.kwargs, meta=meta))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="clips", data=batch, suite=suite))
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="clips",
            validation_definitions=[definition],
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["path"]},
        )
    )
    result = next(iter(checkpoint.run(batch_parameters={"dataframe": table}).run_results.values()))

    by_path = table.set_index("path")
    findings, outcomes = [], []
    # results come back in the suite's order
    for outcome, check in zip(result.results, checks, strict=True):
        column = check.kwargs["column"]
        hits = outcome.result.get("unexpected_index_list") or []
        for hit in hits:
            clip = by_path.loc[hit["path"]]
            reason = check.reason.format(value=clip[column], **clip.to_dict())
            findings.append(
                {
                    "path": hit["path"],
                    "label": clip["label"],
                    "severity": check.severity,
                    "check": check.name,
                    "reason": reason,
                }
            )
        outcomes.append(Outcome(check, int(outcome.result.get("element_count", len(table))), len(hits)))
    return pd.DataFrame(findings, columns=list(FINDING_COLUMNS)), outcomes

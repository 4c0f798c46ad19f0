"""The `ingest` flow: clips that land under an S3 prefix become a new version of a dataset.

list and download (verified) -> validate -> copy into data/raw/<dataset>/ (and list them in its manifest.csv when
it has one) -> `dvc add` + `dvc push` -> record the version (and commit its .dvc file, when `ingest.commit`) -> move
the landing objects to the processed (or quarantine) prefix. Nothing moves in S3 before the push succeeded.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from vidops.components import ingest as landing
from vidops.components import stages, validation, versioning
from vidops.components.catalog import build_catalog
from vidops.components.io import write_json
from vidops.components.layout import Layout
from vidops.components.params import IngestParams, Params
from vidops.flows.pipeline import NETWORK, load_project


@dataclass
class IngestResult:
    dataset: str
    landed: int = 0
    added: list[str] = field(default_factory=list)
    quarantined: dict[str, str] = field(default_factory=dict)  # clip -> why
    skipped: dict[str, str] = field(default_factory=dict)  # clip -> why (changed since listed, already in, name taken)
    version: str | None = None  # DVC's hash of the dataset folder after the ingest
    commit: str | None = None
    report: str | None = None


@task(cache_policy=NO_CACHE, **NETWORK)
def fetch_landed(
    rule: IngestParams, staging: Path
) -> tuple[list[landing.LandingObject], dict[str, str], dict[str, str]]:
    """List the landing objects and download each whose key is <label>/<clip> into `staging`. What came back: every
    object listed; those never downloaded, with why they are quarantined; those that changed since they were listed
    (they stay in landing for the next run), with why. The others are in `staging`."""
    client, (bucket, _) = landing.s3_client(), landing.split_url(rule.landing)
    listed, misplaced, changed = landing.list_landing(client, rule.landing), {}, {}
    for landed in listed:
        if problem := landing.layout_problem(landed.clip):
            misplaced[landed.clip] = problem
            continue
        try:
            landing.download(client, bucket, landed, staging)
        except landing.Changed as exc:
            changed[landed.clip] = str(exc)
    return listed, misplaced, changed


@task(cache_policy=NO_CACHE)
def check_landed(
    staging: Path, fetched: list[landing.LandingObject], layout: Layout, params: Params, task_name: str
) -> dict[str, str]:
    """Validate the fetched clips with the dataset's checks, and against the whole dataset (content and perceptual hash:
    a copy of a clip there is refused, naming its twin); the quarantined ones, with their reasons."""
    checks = stages.validation_checks(params, task_name)
    _, landed, findings = validation.check_clips(staging, checks)
    failed = findings[findings["severity"] == "critical"].groupby("path")["reason"].agg("; ".join).to_dict()
    passed = landed[landed["status"] != "quarantined"]
    # the last validation's probes: only what changed since is probed
    last = validation.previous_catalog(layout.catalog(task_name))
    existing = build_catalog(stages.dataset(layout, params, task_name), last).table
    failed |= validation.twins_in(passed, existing, checks.near_duplicate_bits)
    return {
        o.clip: failed.get(o.clip, "not read as a clip by the catalog")
        for o in fetched
        if o.clip not in set(passed["path"]) or o.clip in failed
    }


@task(cache_policy=NO_CACHE)
def version_dataset(
    layout: Layout, folder: Path, commit: bool, message: str
) -> tuple[versioning.DatasetVersion, str | None]:
    """`dvc add` + `dvc push` (which tries again itself when the network fails), then the optional git commit."""
    version = versioning.add(layout.root, folder)
    versioning.push(layout.root, [version.dvc_file])
    return version, versioning.commit(layout.root, version, message) if commit else None


@task(cache_policy=NO_CACHE, **NETWORK)
def move_landed(rule: IngestParams, objects: list[landing.LandingObject], quarantined: dict[str, str]) -> None:
    """Landing objects to the processed prefix, or the quarantine prefix for clips that failed validation."""
    client, (bucket, prefix) = landing.s3_client(), landing.split_url(rule.landing)
    for landed in objects:
        landing.move(
            client, bucket, landed.key, prefix, rule.quarantine if landed.clip in quarantined else rule.processed
        )


@flow(name="ingest")
def ingest(
    root: str = ".", params_file: str | None = "params.yaml", overrides: list[str] | None = None
) -> IngestResult:
    """Take the clips under `ingest.landing` into `datasets.<ingest.task>` (default: the first of `tasks`) as a new DVC
    version pushed to the remote."""
    layout, params = load_project(root, params_file, overrides)
    rule = params.ingest
    folder = stages.dataset(layout, params, params.ingest_task)
    versioning.init(layout.root)
    result = IngestResult(str(folder.relative_to(layout.root)))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    staging = layout.state / "ingest" / stamp
    try:
        listed, result.quarantined, result.skipped = fetch_landed(rule, staging)
        result.landed = len(listed)
        if not listed:
            return result
        fetched = [o for o in listed if o.clip not in result.quarantined and o.clip not in result.skipped]
        if fetched:
            result.quarantined |= check_landed(staging, fetched, layout, params, params.ingest_task)
        accepted = [o.clip for o in fetched if o.clip not in result.quarantined]
        result.added, skipped = landing.add_clips(staging, accepted, folder)
        result.skipped |= skipped
        if result.added:  # a new version, pushed before any landing object moves
            message = f"vidops ingest {stamp}: {len(result.added)} clips into {result.dataset}"
            version, result.commit = version_dataset(layout, folder, rule.commit, message)
            result.version = version.md5
        done = [
            o
            for o in listed
            if o.clip in result.quarantined or o.clip in result.added or skipped.get(o.clip) == landing.ALREADY_IN
        ]
        move_landed(rule, done, result.quarantined)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report = layout.reports(params.ingest_task) / "ingest" / f"{stamp}.json"
    write_json(report, asdict(result))
    result.report = str(report)
    create_markdown_artifact(
        ingest_report(result), key=f"ingest-{params.ingest_task}", description=f"clips from {rule.landing}"
    )
    return result


def ingest_report(r: IngestResult) -> str:
    """The ingest as markdown, for the Prefect UI."""
    lines = [
        f"# ingest into {r.dataset}",
        f"- landed: {r.landed}; added: {len(r.added)}; quarantined: {len(r.quarantined)}; "
        f"left or skipped: {len(r.skipped)}",
        f"- dataset version: `{r.version}`" + (f", commit `{r.commit}`" if r.commit else ""),
    ]
    lines += [f"- quarantined `{clip}`: {why}" for clip, why in r.quarantined.items()]
    lines += [f"- skipped `{clip}`: {why}" for clip, why in r.skipped.items()]
    return "\n".join(lines)

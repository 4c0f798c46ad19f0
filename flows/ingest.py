"""The `ingest` flow: clips that land under an S3 prefix become a new version of a dataset.

list and download (verified) -> validate -> copy into data/raw/<dataset>/ -> `dvc add` + `dvc push`
-> record the version (and commit its .dvc file, when `ingest.commit`) -> move the landing objects
to the processed (or quarantine) prefix. Nothing moves in S3 before the push succeeded.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from components import ingest as landing
from components import validation, versioning
from components.io import write_json
from components.layout import Layout
from components.params import IngestParams, Params
from flows import stages
from flows.pipeline import NETWORK, load_project


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
def fetch_landed(rule: IngestParams, staging: Path) -> tuple[list[landing.LandingObject], dict[str, str]]:
    """Download every landing object that has a <label>/<clip> key into `staging`; those that changed since they were
    listed stay in landing for the next run (their reasons come back)."""
    client, (bucket, _) = landing.s3_client(), landing.split_url(rule.landing)
    fetched, changed = [], {}
    for landed in landing.list_landing(client, rule.landing):
        try:
            landing.download(client, bucket, landed, staging)
            fetched.append(landed)
        except landing.Changed as exc:
            changed[landed.clip] = str(exc)
    return fetched, changed


@task(cache_policy=NO_CACHE)
def check_landed(staging: Path, fetched: list[landing.LandingObject], params: Params, task_name: str) -> dict[str, str]:
    """Validate the fetched clips with the dataset's checks; the quarantined ones, with their reasons."""
    quarantined = {o.clip: "not <label>/<clip>: put each clip in a folder named after its label" for o in fetched if o.clip.count("/") != 1}
    if len(quarantined) == len(fetched):
        return quarantined
    _, manifest, findings = validation.check_clips(staging, stages.validation_checks(params, task_name))
    failed = findings[findings["severity"] == "critical"].groupby("path")["reason"].agg("; ".join)
    return {**quarantined, **failed.to_dict()}


@task(cache_policy=NO_CACHE)
def version_dataset(layout: Layout, folder: Path, commit: bool, message: str) -> tuple[versioning.DatasetVersion, str | None]:
    """`dvc add` + `dvc push` (which tries again itself when the network fails), then the optional git commit."""
    version = versioning.add(layout.root, folder)
    versioning.push(layout.root, [version.dvc_file])
    return version, versioning.commit(layout.root, version, message) if commit else None


@task(cache_policy=NO_CACHE, **NETWORK)
def move_landed(rule: IngestParams, objects: list[landing.LandingObject], quarantined: dict[str, str]) -> None:
    """Landing objects to the processed prefix, or the quarantine prefix for clips that failed validation."""
    client, (bucket, prefix) = landing.s3_client(), landing.split_url(rule.landing)
    for landed in objects:
        landing.move(client, bucket, landed.key, prefix, rule.quarantine if landed.clip in quarantined else rule.processed)


@flow(name="ingest")
def ingest(root: str = ".", params_file: str | None = "params.yaml", overrides: list[str] | None = None) -> IngestResult:
    """Take the clips under `ingest.landing` into `datasets.<ingest.task>` as a new DVC version pushed to the remote."""
    layout, params = load_project(root, params_file, overrides)
    rule = params.ingest
    folder = stages.dataset(layout, params, rule.task)
    versioning.init(layout.root)
    result = IngestResult(str(folder.relative_to(layout.root)))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    staging = layout.state / "ingest" / stamp
    try:
        fetched, result.skipped = fetch_landed(rule, staging)
        result.landed = len(fetched) + len(result.skipped)
        if not fetched:
            return result
        result.quarantined = check_landed(staging, fetched, params, rule.task)
        accepted = [o.clip for o in fetched if o.clip not in result.quarantined]
        result.added, skipped = landing.add_clips(staging, accepted, folder)
        result.skipped |= skipped
        version, result.commit = version_dataset(layout, folder, rule.commit, f"vidops ingest {stamp}: {len(result.added)} clips into {result.dataset}")
        result.version = version.md5
        move_landed(rule, [o for o in fetched if skipped.get(o.clip, landing.ALREADY_IN) == landing.ALREADY_IN], result.quarantined)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report = layout.reports(rule.task) / "ingest" / f"{stamp}.json"
    write_json(report, asdict(result))
    result.report = str(report)
    create_markdown_artifact(ingest_report(result), key=f"ingest-{rule.task}", description=f"clips from {rule.landing}")
    return result


def ingest_report(r: IngestResult) -> str:
    """The ingest as markdown, for the Prefect UI."""
    lines = [f"# ingest into {r.dataset}", f"- landed: {r.landed}; added: {len(r.added)}; quarantined: {len(r.quarantined)}; left or skipped: {len(r.skipped)}",
             f"- dataset version: `{r.version}`" + (f", commit `{r.commit}`" if r.commit else "")]  # fmt: skip
    lines += [f"- quarantined `{clip}`: {why}" for clip, why in r.quarantined.items()]
    lines += [f"- skipped `{clip}`: {why}" for clip, why in r.skipped.items()]
    return "\n".join(lines)

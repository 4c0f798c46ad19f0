"""Data Docs: the suite's expectations (`Check`) and their results (`Outcome`), and vidops's own static pages of them,
one file each, inline CSS and no scripts, so they read the same offline (Great Expectations' own load their CSS and
scripts from a CDN): the runs kept, newest first, then the last run's expectations and findings."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from vidops.components.io import atomic_path, write_json

SUITE = "vidops_clips"  # the expectation suite's name, as GE reports it

Severity = Literal["critical", "warning"]


@dataclass(frozen=True)
class Check:
    """One expectation: its short name, a GE expectation class and its arguments, its severity, the reason per clip."""

    name: str
    expectation: str
    kwargs: dict[str, Any]
    severity: Severity
    reason: str  # formatted with the clip's row: {value} is the checked column's value


@dataclass(frozen=True)
class Outcome:
    """One expectation's result over the catalog table: how many clips it looked at, how many failed it."""

    check: Check
    clips: int
    failed: int


KEPT_RUNS = 30  # Data Docs keep a page for each of the last runs


def write_data_docs(
    docs_dir: Path, dataset: Path, table: pd.DataFrame, findings: pd.DataFrame, outcomes: list[Outcome]
) -> Path:
    """This run's page under `docs_dir`/runs/, and `docs_dir`/index.html: the runs kept, newest first, then this run.

    The pages are whole in themselves (inline CSS, no scripts, nothing fetched), so they read the same offline.
    """
    now = datetime.now(UTC)
    run = {
        "id": now.strftime("%Y%m%dT%H%M%S%fZ"),
        "time": now.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "dataset": str(dataset),
        "status": run_status(findings),
        "clips": len(table),
        "accepted": int((table["status"] != "quarantined").sum()),
        "warned": int((table["status"] == "warned").sum()),
        "quarantined": int((table["status"] == "quarantined").sum()),
    }
    detail = _run_html(run, findings, outcomes)
    runs_file = docs_dir / "runs.json"
    earlier = json.loads(runs_file.read_text()) if runs_file.is_file() else []
    runs = [run, *earlier][:KEPT_RUNS]
    for old in earlier[KEPT_RUNS - 1 :]:
        (docs_dir / "runs" / f"{old['id']}.html").unlink(missing_ok=True)
    with atomic_path(docs_dir / "runs" / f"{run['id']}.html") as tmp:
        tmp.write_text(_page(f"Validation {run['time']}", '<p><a href="../index.html">All runs</a></p>' + detail))
    write_json(runs_file, runs)
    rows = "".join(
        f'<tr><td><a href="runs/{r["id"]}.html">{r["time"]}</a></td><td>{_status(r["status"])}</td>'
        f"<td>{html.escape(r['dataset'])}</td>"
        f'<td class="n">{r["clips"]}</td><td class="n">{r["accepted"]}</td><td class="n">{r["warned"]}</td>'
        f'<td class="n">{r["quarantined"]}</td></tr>'
        for r in runs
    )
    index = (
        f"<h2>Runs</h2><table><tr><th>run</th><th>status</th><th>dataset</th><th>clips</th><th>accepted</th>"
        f"<th>with warnings</th><th>quarantined</th></tr>{rows}</table><h2>Last run</h2>{detail}"
    )
    with atomic_path(docs_dir / "index.html") as tmp:
        tmp.write_text(_page("Validation", index))
    return docs_dir / "index.html"


def run_status(findings: pd.DataFrame) -> str:
    """A run fails only for a critical finding: a warning keeps its clip, and the run passes with warnings."""
    if (findings["severity"] == "critical").any():
        return "failed"
    return "passed with warnings" if len(findings) else "passed"


def _run_html(run: dict[str, Any], findings: pd.DataFrame, outcomes: list[Outcome]) -> str:
    """One run: its counts, each expectation's outcome, each finding."""
    checks = "".join(
        f"<tr><td>{o.check.name}</td><td>{o.check.severity}</td><td><code>{o.check.expectation}"
        f"({html.escape(', '.join(f'{k}={v!r}' for k, v in o.check.kwargs.items()))})</code></td>"
        f'<td class="n">{o.clips}</td><td class="n">{o.failed}</td>'
        f"<td>{_status('passed' if not o.failed else 'failed' if o.check.severity == 'critical' else 'warning')}"
        "</td></tr>"
        for o in outcomes
    )
    found = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(str(f[c]))}</td>" for c in ("path", "label", "severity", "check", "reason"))
        + "</tr>"
        for f in findings.to_dict("records")
    )
    return (
        f"<p>{_status(run['status'])} &nbsp; suite <code>{SUITE}</code> over "
        f"<code>{html.escape(run['dataset'])}</code>, {run['time']}</p>"
        f"<p>{run['clips']} clips: {run['accepted']} accepted ({run['warned']} with warnings), "
        f"{run['quarantined']} quarantined</p>"
        "<h3>Expectations</h3><table><tr><th>check</th><th>severity</th><th>expectation</th>"
        f"<th>clips</th><th>failed</th><th>result</th></tr>{checks}</table>"
        f"<h3>Findings</h3>"
        + (
            f"<table><tr><th>clip</th><th>label</th><th>severity</th><th>check</th><th>reason</th></tr>{found}</table>"
            if found
            else "<p>none</p>"
        )
    )


def _status(word: str) -> str:
    return f'<span class="s {word.split()[-1]}">{word}</span>'


STYLE = (
    "body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:75em;padding:0 1em;color:#222}\n"
    "table{border-collapse:collapse;margin:.5em 0 1.5em;width:100%}"
    "th,td{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left;vertical-align:top}\n"
    "th{background:#f3f3f3}td.n{text-align:right}code{font-size:13px}"
    ".s{border-radius:3px;padding:.1em .5em;font-weight:600;white-space:nowrap}\n"
    ".passed{background:#d8f0d8;color:#185c18}.warnings,.warning{background:#fbeec0;color:#6b4c00}"
    ".failed{background:#f8d4d4;color:#8a1414}"
)


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title} · Data Docs · vidops</title>'
        f"<style>{STYLE}</style></head><body><h1>{title}</h1>{body}</body></html>\n"
    )

"""Catalog: every clip of a dataset, probed (components.probe) into the catalog table, one row per clip.

A dataset is a folder, in one of two forms (`dataset_manifest` tells which): its clips laid out
`<label>/<clip>` (UCF101's layout), or listed by a `manifest.csv` at its top with columns path,
label and optionally group and split, the paths relative to the folder and never outside it.
`vidops validate` also takes such a CSV by any name; its folder is then the root.
Probing runs in threads (PyAV and hashlib release the GIL) and is incremental: a file whose
inode, size and mtime match the previous catalog table keeps its row, unread.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from vidops.components.errors import VidopsError
from vidops.components.io import records
from vidops.components.parallel import Mapper, in_threads
from vidops.components.probe import PROBE_COLUMNS, file_sha256, probe_clip

SOURCE_COLUMNS = ("path", "label", "group", "split")
# at a dataset folder's top: the clips it holds (SOURCE_COLUMNS), instead of <label>/<clip>
DATASET_MANIFEST = "manifest.csv"
CATALOG_COLUMNS = SOURCE_COLUMNS + PROBE_COLUMNS
FINDING_COLUMNS = ("path", "label", "severity", "check", "reason")  # of quarantine.csv and warnings.csv: a failed check
PROBE_BATCH = 16  # clips a unit of probing work
# nullable integers: an unreadable clip has no width, and that must not turn 96 into 96.0
_INT_COLUMNS = {
    name: "Int64"
    for name in (
        "size_bytes",
        "mtime_ns",
        "inode",
        "video_streams",
        "width",
        "height",
        "rotation",
        "frames_stream",
        "frames",
        "keyframe_interval",
        "sample_rate",
        "channels",
    )
}
_UCF_GROUP = re.compile(r"_(g\d+)_c\d+", re.IGNORECASE)  # v_ApplyEyeMakeup_g08_c01.avi: person/scene group g08


@dataclass(frozen=True)
class Catalog:
    table: pd.DataFrame
    probed: int  # files opened with PyAV this time
    reused: int  # rows carried over from the previous catalog table


def build_catalog(
    dataset: Path, previous: pd.DataFrame | None = None, workers: int = 4, mapper: Mapper = in_threads
) -> Catalog:
    """Probe every clip of `dataset` (folder or manifest CSV), in batches through `mapper`; reuse `previous` rows of
    unchanged files."""
    root, sources = list_sources(dataset)
    # the previous rows as plain dicts, once: a pandas lookup per clip weighs on a re-run (measured:
    # benchmarks/README.md)
    known = {row["path"]: row for row in records(previous)} if previous is not None else {}
    jobs = [(source, known.get(source["path"])) for source in sources]
    # an unchanged file keeps its row here, after one stat: only the others go out in batches (a re-run's work units,
    # and the flow's task runs, are the new clips', and unchanged rows cost no thread pool)
    results = {i: kept for i, (source, old) in enumerate(jobs) if (kept := _kept(str(root), source, old))}
    todo = [i for i in range(len(jobs)) if i not in results]
    batches = [todo[i : i + PROBE_BATCH] for i in range(0, len(todo), PROBE_BATCH)]
    for batch, rows in zip(
        batches, mapper(probe_batch, [(str(root), [jobs[i] for i in batch]) for batch in batches], workers), strict=True
    ):
        results.update(zip(batch, rows, strict=True))
    # built as objects first: a None among ints would otherwise go through float64 and round nanosecond mtimes
    table = pd.DataFrame([results[i][0] for i in range(len(jobs))], columns=list(CATALOG_COLUMNS), dtype=object)
    table = table.astype(_INT_COLUMNS).infer_objects()
    reused = sum(was_reused for _, was_reused in results.values())
    return Catalog(table, probed=len(results) - reused, reused=reused)


def probe_batch(
    root: str, jobs: list[tuple[dict[str, Any], dict[str, Any] | None]]
) -> list[tuple[dict[str, Any], bool]]:
    """Each (source, its previous row or None) as a table row, and whether the previous row was reused (the file's
    bytes are still the ones probed: `_same_content`). build_catalog keeps an unchanged file's row without a batch."""
    rows = []
    for source, old in jobs:
        source, path = dict(source), Path(root) / source["path"]
        problem = source.pop("problem")
        if problem:  # never opened: it is not a file of the dataset
            rows.append(({**dict.fromkeys(PROBE_COLUMNS), "readable": False, "error": problem, **source}, False))
        elif old is not None and (same := _same_content(path, old)):
            rows.append(({**old, **same, **source}, True))
        else:
            rows.append(({**probe_clip(path), **source}, False))
    return rows


def dataset_manifest(dataset: Path) -> Path | None:
    """The CSV that lists the dataset's clips: `dataset` itself when it is a CSV file, the folder's top-level
    manifest.csv when it has one; None for a folder laid out <label>/<clip>. This alone decides a dataset's form."""
    if dataset.is_file() and dataset.suffix.lower() == ".csv":
        return dataset
    if dataset.is_dir() and (dataset / DATASET_MANIFEST).is_file():
        return dataset / DATASET_MANIFEST
    return None


def list_sources(dataset: Path) -> tuple[Path, list[dict[str, Any]]]:
    """The dataset's root and one dict per clip: path (relative to the root), label, group, split, and the
    problem that keeps it from being probed (None for most)."""
    listing = dataset_manifest(dataset)
    if listing is not None:
        return listing.parent, _sources_from_csv(listing)
    if not dataset.is_dir():
        raise VidopsError(
            f"{dataset}: no such dataset (expected a folder of <label>/<clip> files, "
            f"a folder with a {DATASET_MANIFEST}, or a manifest CSV)"
        )
    root = dataset.resolve()
    labels = sorted(label for label in dataset.iterdir() if label.is_dir() and not label.name.startswith("."))
    # a label folder that a link leads out of the root is never walked: one row says so, and nothing in it is opened
    away = {label: _outside(root, label) for label in labels}
    # a file in a folder that stays inside leads out only through a link of its own: resolving every path weighs on a
    # re-run (measured: benchmarks/README.md). Directory entries, not Path objects: their type needs no stat of its own.
    files = sorted(
        (label.name, entry.name, _outside(root, Path(entry.path)) if entry.is_symlink() else None)
        for label in labels
        if not away[label]
        for entry in os.scandir(label)
        if not entry.name.startswith(".") and (entry.is_file() or entry.is_symlink())
    )
    if not files and not any(away.values()):
        raise VidopsError(
            f"{dataset}: no clips found (expected <label>/<clip> files inside, or a {DATASET_MANIFEST} listing them)"
        )
    sources = [_source(f"{label}/{name}", label, None, None, problem) for label, name, problem in files]
    # and a row for each label folder a link leads out of, of no class
    return dataset, sources + [_source(label.name, "", None, None, why) for label, why in away.items() if why]


def _outside(root: Path, path: Path) -> str | None:
    """The problem of a path that resolves out of the dataset root (through a symbolic link), or None: the folder form's
    rule and the manifest's are one."""
    target = path.resolve()  # follows links
    if target != root and root not in target.parents:
        return f"path is outside the dataset root {root} (a symbolic link leads to {target})"
    return None


def _sources_from_csv(csv: Path) -> list[dict[str, Any]]:
    """The clips a manifest CSV lists. A CSV that cannot be used is an error naming it and the lines at fault; a listed
    file that is missing or outside the CSV's folder is a source with its problem, which validation quarantines."""
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise VidopsError(f"{csv}: not a readable CSV: {exc}") from None
    table.columns = [str(c).strip() for c in table.columns]
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise VidopsError(
            f"{csv}: missing column(s) {', '.join(sorted(missing))}; expected path, label[, group, split]"
        )
    if table.empty:
        raise VidopsError(f"{csv}: the manifest lists no clips")
    line = pd.Series(range(2, len(table) + 2), index=table.index)  # the file's line of each row, after the header
    for column in ("path", "label"):
        empty = line[table[column].str.strip() == ""]
        if len(empty):
            raise VidopsError(f"{csv}: empty {column} on line(s) {', '.join(map(str, empty[:10]))}")
    bad_split = set(table.get("split", pd.Series(dtype=str))) - {"", "train", "test"}
    if bad_split:
        raise VidopsError(f"{csv}: column split holds {sorted(bad_split)}; expected train, test or empty")
    # "a.mp4", "./a.mp4" and "x/../a.mp4" are one file: compared, and kept, in their normal form
    table["path"] = [posixpath.normpath(p) for p in table["path"]]
    twice = table["path"][table["path"].duplicated(keep=False)]
    if len(twice):
        lines = twice.groupby(twice).groups
        shown = "; ".join(
            f"{path} (lines {', '.join(str(line[i]) for i in rows)})" for path, rows in list(lines.items())[:5]
        )
        raise VidopsError(f"{csv}: path(s) listed more than once: {shown}")
    root = csv.parent.resolve()
    group, split = (
        table.get("group", pd.Series("", index=table.index)),
        table.get("split", pd.Series("", index=table.index)),
    )
    return [
        _source(path, label, group[i] or None, split[i] or None, _listed_file_problem(root, path, csv.name))
        for i, path, label in zip(table.index, table["path"], table["label"], strict=True)
    ]


def _listed_file_problem(root: Path, path: str, listing: str) -> str | None:
    """Why a path a manifest lists is not a clip of the dataset rooted at `root`; None when it is one."""
    if PurePosixPath(path).is_absolute() or path == ".." or path.startswith("../"):
        return f"path is outside the dataset root {root}"
    file = root / path
    # a clip reached through a link out of the root is not the dataset folder's to version
    outside = _outside(root, file)
    if outside:
        return outside
    if not file.exists():
        return f"listed in {listing} but there is no such file"
    if file.is_dir():
        return f"listed in {listing} but it is a folder, not a clip"
    return None


def _source(path: str, label: str, group: str | None, split: str | None, problem: str | None) -> dict[str, Any]:
    if group is None:  # UCF101's group in the name, else the clip alone (its path without the suffix)
        stem, suffix = posixpath.splitext(path)
        stem = path if suffix == "." else stem  # "clip." has no suffix to pathlib, whose group names are kept
        found = _UCF_GROUP.search(posixpath.basename(stem))
        group = found.group(1).lower() if found else stem
    return {"path": path, "label": label, "group": group, "split": split, "problem": problem}


def _kept(root: str, source: dict[str, Any], old: dict[str, Any] | None) -> tuple[dict[str, Any], bool] | None:
    """The previous row of a source whose file is unchanged (`_unchanged`), as probe_batch returns it; else None."""
    if old is None or source["problem"] or not _unchanged(os.path.join(root, source["path"]), old):
        return None
    return {**old, **{key: value for key, value in source.items() if key != "problem"}}, True


def _unchanged(path: str, old: dict[str, Any]) -> bool:
    """The file is the one probed last time: the same inode, size and modification time, as DVC's own state cache
    judges.

    Not its content hash: that would read every byte of the dataset on every run. A file written anew, copied or moved
    in has another inode or mtime; one edited in place to the same size with its mtime set back is missed, as DVC
    misses it.
    """
    if any(pd.isna(old.get(key)) for key in ("size_bytes", "mtime_ns", "inode", "sha256")):
        return False  # it could not be read last time, or an older table has no inode: look again
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns) == (old["inode"], old["size_bytes"], old["mtime_ns"])


def _same_content(path: Path, old: dict[str, Any]) -> dict[str, int] | None:
    """The file's new inode, size and mtime when its bytes are still the ones probed last time (the same sha256), else
    None. A dataset rewritten with the same clips leaves such files (`dvc checkout` of another version and back, a
    copy tool, `dvc add` of clips that are hard links: DVC, cache type copy, replaces each by a copy of its cache's),
    and a hash, far cheaper than a probe, spares probing it again (measured: benchmarks/README.md)."""
    try:
        stat = path.stat()
        if pd.isna(old.get("sha256")) or stat.st_size != old.get("size_bytes") or file_sha256(path) != old["sha256"]:
            return None
    except OSError:
        return None
    return {"size_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}


def assign_splits(table: pd.DataFrame, test_fraction: float) -> pd.DataFrame:
    """Fill empty `split` cells: whole groups go to one split, about `test_fraction` of each label to test.

    Groups are taken in the order of their name's hash, so the split is deterministic and
    does not depend on file order; a split given by the dataset's manifest is kept.
    """
    out = table.copy()
    todo = out["split"].isna() | (out["split"] == "")
    totals = out.groupby("label").size().to_dict()
    target = {label: max(1, round(n * test_fraction)) for label, n in totals.items()}
    in_test = dict.fromkeys(totals, 0) | out[~todo & (out["split"] == "test")].groupby("label").size().to_dict()
    per_group: dict[str, dict[str, int]] = {}  # counted once, so the loop below is linear in the groups
    for (group, label), n in out[todo].groupby(["group", "label"], dropna=False).size().items():
        per_group.setdefault(group, {})[label] = int(n)
    chosen = {}
    for group in sorted(per_group, key=lambda g: hashlib.sha256(str(g).encode()).hexdigest()):
        counts = per_group[group]
        fits = all(
            in_test[label] + n <= target[label] and in_test[label] + n < totals[label] for label, n in counts.items()
        )
        chosen[group] = "test" if fits else "train"
        for label, n in counts.items() if fits else ():
            in_test[label] += n
    out.loc[todo, "split"] = out.loc[todo, "group"].map(chosen)
    return out


def read_catalog(path: Path) -> pd.DataFrame:
    """Read a catalog table (or the accepted clips' table) written by this module, with its integer columns restored."""
    if not path.is_file():
        raise VidopsError(f"{path}: no catalog table; run the validate stage first")
    # integers parsed as such: through float64, a nanosecond mtime would lose its last digits
    text = {"group": str, "split": str, "phash": str, "sha256": str}
    return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={**_INT_COLUMNS, **text})

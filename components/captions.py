"""Captions: a captioned dataset's captions.csv (path, caption: a row per caption, several per clip), read strictly, and
checked with its clips: a caption with no word or too many, a clip left without one, a caption naming no clip."""

from __future__ import annotations

import csv
import io
import posixpath
from pathlib import Path

import numpy as np
import pandas as pd

from vidops.components import text
from vidops.components.catalog import FINDING_COLUMNS, dataset_manifest
from vidops.components.errors import VidopsError
from vidops.components.layout import CAPTIONS_FILE

CAPTION_COLUMNS = ("path", "caption")  # of a CAPTIONS_FILE: one row per caption, several per clip


def dataset_captions(dataset: Path) -> pd.DataFrame:
    """The captions of a dataset's clips, from the CAPTIONS_FILE at its top (beside its manifest CSV):
    `read_captions_csv`'s table. A dataset without one is an error naming the file it needs."""
    listing = dataset_manifest(dataset)
    file = (listing.parent if listing is not None else dataset) / CAPTIONS_FILE
    if not file.is_file():
        raise VidopsError(
            f"{dataset}: this task needs captions and there is no {file}: "
            f"a CSV with columns {', '.join(CAPTION_COLUMNS)}, one row "
            f"per caption (several per clip), each path the clip's relative to {file.parent}"
        )
    return read_captions_csv(file)


def read_captions_csv(path: Path) -> pd.DataFrame:
    """A CAPTIONS_FILE as a table of path (in normal form, as a manifest's), caption (stripped) and line (the file's
    line of the row); blank lines are skipped. A file that is not UTF-8 CSV with both columns is an error naming it and
    the line at fault."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VidopsError(f"{path}: cannot read the captions: {exc.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise VidopsError(
            f"{path}: not UTF-8 text: line {line} holds the byte {data[exc.start]:#04x}; save it as UTF-8"
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, header, start = [], None, 1
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1  # a quoted caption may span lines: a row is told by its first
            if not any(cell.strip() for cell in cells):
                continue
            if header is None:
                header = [cell.strip() for cell in cells]
                missing = [column for column in CAPTION_COLUMNS if column not in header]
                if missing:
                    raise VidopsError(
                        f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(CAPTION_COLUMNS)}"
                    )
                continue
            if len(cells) > len(header):
                raise VidopsError(
                    f"{path}: line {line} has {len(cells)} fields where the header has {len(header)} "
                    "(quote a caption that holds a comma)"
                )
            row = dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=True))
            rows.append({"path": row["path"].strip(), "caption": row["caption"].strip(), "line": line})
    except csv.Error as exc:
        raise VidopsError(f"{path}: not a readable CSV at line {reader.line_num}: {exc}") from None
    if header is None:
        raise VidopsError(f"{path}: empty; expected a header {','.join(CAPTION_COLUMNS)} and a row per caption")
    table = pd.DataFrame(rows, columns=["path", "caption", "line"])
    no_path = table.loc[table["path"] == "", "line"]
    if len(no_path):
        raise VidopsError(f"{path}: empty path on line(s) {', '.join(map(str, no_path[:10]))}")
    table["path"] = [posixpath.normpath(p) for p in table["path"]]  # as the manifest's, so the two compare
    return table


def caption_problems(captions: pd.DataFrame, max_words: int) -> pd.Series:
    """Why each caption row is dropped: empty_caption (no word: blank, or punctuation only), long_caption (over
    `max_words` words), or "" for one kept. Words are counted as the captioner reads them (text.words)."""
    words = captions["caption"].map(lambda caption: len(text.words(caption)))
    return pd.Series(
        np.where(words == 0, "empty_caption", np.where(words > max_words, "long_caption", "")),
        index=captions.index,
        dtype=object,
    )


def derive_caption_checks(table: pd.DataFrame, captions: pd.DataFrame, max_words: int) -> pd.DataFrame:
    """Add each clip's captions as columns: `captions` (how many are kept), `empty_caption` and `long_caption` (the
    lines dropped), `no_caption` (why none is left; null when one is)."""
    out = table.copy()
    problem = caption_problems(captions, max_words)
    dropped = _lines_by_path(captions[problem != ""])
    out["captions"] = out["path"].map(captions.loc[problem == "", "path"].value_counts()).fillna(0).astype(int)
    out["empty_caption"] = out["path"].map(_lines_by_path(captions[problem == "empty_caption"]))
    out["long_caption"] = out["path"].map(_lines_by_path(captions[problem == "long_caption"], words=True))
    out["no_caption"] = [
        None
        if n
        else f"every caption of it in {CAPTIONS_FILE} is dropped ({dropped[path]})"
        if path in dropped
        else f"no caption in {CAPTIONS_FILE}"
        for path, n in zip(out["path"], out["captions"], strict=True)
    ]
    return out


def caption_orphans(table: pd.DataFrame, captions: pd.DataFrame) -> pd.DataFrame:
    """A warning finding for each path that captions name and that is no clip of the dataset (a typo, a clip
    removed)."""
    stray = _lines_by_path(captions[~captions["path"].isin(set(table["path"]))])
    return pd.DataFrame(
        [
            {
                "path": path,
                "label": "",
                "severity": "warning",
                "check": "caption_orphan",
                "reason": f"named on {lines} of {CAPTIONS_FILE}, but no clip of the dataset: its captions are ignored",
            }
            for path, lines in stray.items()
        ],
        columns=list(FINDING_COLUMNS),
    )


def _lines_by_path(rows: pd.DataFrame, words: bool = False) -> dict[str, str]:
    """Each path among caption `rows` and its lines: "line 4", "lines 4, 9"; with `words`, each caption's length too."""
    found: dict[str, list[str]] = {}
    for path, line, caption in zip(rows["path"], rows["line"], rows["caption"], strict=True):
        found.setdefault(path, []).append(f"{line} ({len(text.words(caption))} words)" if words else str(line))
    return {path: ("line " if len(lines) == 1 else "lines ") + ", ".join(lines) for path, lines in found.items()}


def accepted_captions(captions: pd.DataFrame | None, accepted: pd.DataFrame, max_words: int) -> pd.DataFrame:
    """The captions kept of the `accepted` clips (path, caption), in the file's order; none without `captions`."""
    if captions is None:
        return pd.DataFrame(columns=list(CAPTION_COLUMNS))
    kept = captions[(caption_problems(captions, max_words) == "") & captions["path"].isin(set(accepted["path"]))]
    return kept[list(CAPTION_COLUMNS)]

import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest

from components.catalog import assign_splits, build_catalog, probe_clip
from components.errors import VidopsError
from components.generate import generate_dataset
from components.params import GenerateParams, ValidationParams
from components.validation import ACCEPTED, validate_dataset


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_probe_reads_the_streams(tiny_dataset: Path):
    row = probe_clip(next(tiny_dataset.rglob("*.mp4")))
    assert row["readable"] and row["error"] == ""
    assert (row["video_codec"], row["width"], row["fps"], row["frames"]) == ("h264", 48, 25.0, 25)
    assert row["duration_s"] == pytest.approx(1.0)
    assert (row["audio_codec"], row["sample_rate"], row["channels"]) == ("aac", 16000, 1)
    assert len(row["sha256"]) == 64


def test_probe_marks_a_corrupt_file_unreadable(tmp_path: Path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 but then nothing")
    row = probe_clip(bad)
    assert not row["readable"]
    assert row["error"]


def test_catalog_has_one_row_per_clip_labelled_by_folder(tiny_dataset: Path, tiny_params):
    manifest = build_catalog(tiny_dataset)
    assert len(manifest) == 7 * tiny_params.generate.clips_per_class
    assert set(manifest["label"]) == {p.name for p in tiny_dataset.iterdir() if p.is_dir()}
    assert all(path.split("/")[0] == label for path, label in zip(manifest["path"], manifest["label"]))


def test_catalog_of_a_missing_or_empty_folder_is_an_error(tmp_path: Path):
    with pytest.raises(VidopsError, match="no such dataset folder"):
        build_catalog(tmp_path / "nope")
    with pytest.raises(VidopsError, match="no clips found"):
        build_catalog(tmp_path)


def test_splits_are_stratified_and_follow_content_not_names(tiny_dataset: Path):
    manifest = build_catalog(tiny_dataset)
    split = assign_splits(manifest, 0.25)
    assert (split.groupby("label")["split"].apply(lambda s: (s == "test").sum()) == 1).all()
    shuffled = assign_splits(manifest.sample(frac=1, random_state=0), 0.25)
    assert split.set_index("path")["split"].equals(shuffled.set_index("path")["split"].loc[split["path"]])


def test_defective_clips_are_quarantined_with_reasons_and_inputs_untouched(tmp_path: Path, tiny_dataset: Path):
    dataset = tmp_path / "raw"
    shutil.copytree(tiny_dataset, dataset)
    (dataset / "rotate" / "corrupt.mp4").write_bytes(b"definitely not a video")
    short = generate_dataset(tmp_path / "short", GenerateParams(clips_per_class=1, duration_s=0.2, size=48)).root
    shutil.copy(short / "zoom_in" / "zoom_in_000.mp4", dataset / "zoom_in" / "too_short.mp4")
    before = _fingerprint(dataset)

    summary = validate_dataset(dataset, tmp_path / "catalog", ValidationParams(), 0.25)

    quarantine = pd.read_csv(summary.quarantine)
    reasons = quarantine.groupby("path")["reason"].apply(" | ".join)
    assert "unreadable" in reasons["rotate/corrupt.mp4"]
    assert "duration 0.20 s is outside [0.5, 600.0] s" in reasons["zoom_in/too_short.mp4"]
    accepted = pd.read_csv(summary.accepted_manifest)
    assert not accepted["path"].isin(["rotate/corrupt.mp4", "zoom_in/too_short.mp4"]).any()
    assert (summary.clips, summary.accepted, summary.quarantined) == (23, 21, 2)
    assert _fingerprint(dataset) == before  # nothing moved, deleted or changed


def test_a_class_below_its_minimum_fails_and_says_which(tmp_path: Path, tiny_dataset: Path):
    dataset = tmp_path / "raw"
    shutil.copytree(tiny_dataset, dataset)
    for clip in list((dataset / "zoom_out").iterdir())[1:]:
        clip.write_bytes(b"broken")
    catalog = tmp_path / "catalog"
    with pytest.raises(VidopsError, match="zoom_out has 1"):
        validate_dataset(dataset, catalog, ValidationParams(), 0.25)
    assert (catalog / "quarantine.csv").is_file()  # the why is written down
    assert not (catalog / ACCEPTED).exists()  # and nothing looks ready to extract

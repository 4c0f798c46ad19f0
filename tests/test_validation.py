"""Catalog and validation on real files, good and defective, each with its expected verdict."""

import hashlib
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from corpus import audio_only, encode, truncated
from vidops.components.catalog import assign_splits, build_catalog, list_sources
from vidops.components.errors import VidopsError
from vidops.components.layout import ACCEPTED, CATALOG
from vidops.components.params import ValidationParams, load_params
from vidops.components.probe import probe_clip
from vidops.components.validation import validate_dataset, validation_checks

VFR_MS = [
    0,
    40,
    80,
    100,
    180,
    200,
    260,
    300,
    380,
    400,
    440,
    520,
    540,
    600,
    640,
    700,
    760,
    800,
    840,
    900,
    960,
    1000,
    1040,
    1100,
    1160,
]


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str | None]]:
    """A dataset mixing every kind of good and defective clip; maps each path to the check it must fail (None:
    accept)."""
    root = tmp_path_factory.mktemp("corpus")
    data = root / "dataset"
    outside = encode(root / "elsewhere" / "linked.mp4", seed=99)
    faststart = encode(
        root / "source" / "faststart.mp4", frames=50, seed=98, container_options={"movflags": "+faststart"}
    )
    moov_last = encode(root / "source" / "plain.mp4", seed=97)
    a, b = data / "a", data / "b"
    expected: dict[str, str | None] = {
        "a/h264.mp4": encode(a / "h264.mp4", seed=1) and None,
        "a/xvid.avi": encode(a / "xvid.avi", "mpeg4", "avi", seed=2, options={"vtag": "XVID"}) and None,
        "a/vp9.webm": encode(
            a / "vp9.webm", "libvpx-vp9", "webm", seed=3, options={"deadline": "realtime", "cpu-used": "8"}
        )
        and None,
        "a/h264.mkv": encode(a / "h264.mkv", container="matroska", seed=4) and None,
        "b/h264.mov": encode(b / "h264.mov", container="mov", seed=5) and None,
        "b/mjpeg.avi": encode(b / "mjpeg.avi", "mjpeg", "avi", pix_fmt="yuvj420p", seed=6) and None,
        "b/10bit.mp4": encode(b / "10bit.mp4", pix_fmt="yuv420p10le", seed=7) and None,
        "b/odd 97x61.mp4": encode(b / "odd 97x61.mp4", pix_fmt="yuv444p", size=(97, 61), seed=8) and None,
        "a/rotated.mp4": encode(a / "rotated.mp4", rotation=90, seed=9) and None,
        "a/vfr.mp4": encode(a / "vfr.mp4", frame_times_ms=VFR_MS, seed=10) and None,
        "b/long gop.mp4": encode(b / "long gop.mp4", frames=50, options={"g": "250", "bf": "3"}, seed=11) and None,
        "b/ünïcödé ✓.mp4": encode(b / "ünïcödé ✓.mp4", seed=12) and None,
        "a/empty.mp4": "readable",
        "a/text.mp4": "readable",
        "b/random.mp4": "readable",
        "a/moov-missing.mp4": "readable",
        "b/mdat-cut-short.mp4": "readable",
        "a/audio-only.m4a": "readable",
        "b/one-frame.mp4": "duration",
        "a/16x16.mp4": "width",
        "b/8k.mp4": "width",
        "a/z-copy-of-h264.mp4": "duplicate",
        "b/h264-under-b.mp4": "label_conflict",
        "a/dangling-link.mp4": "readable",
    }
    (a / "empty.mp4").write_bytes(b"")
    (a / "text.mp4").write_text("this is not a video\n")
    (b / "random.mp4").write_bytes(os.urandom(4096))
    truncated(moov_last, a / "moov-missing.mp4", 0.6)
    truncated(faststart, b / "mdat-cut-short.mp4", 0.6)
    audio_only(a / "audio-only.m4a")
    encode(b / "one-frame.mp4", frames=1, seed=13)
    encode(a / "16x16.mp4", size=(16, 16), seed=14)
    encode(b / "8k.mp4", size=(7680, 4320), frames=14, options={"preset": "ultrafast"}, seed=15)
    shutil.copy(a / "h264.mp4", a / "z-copy-of-h264.mp4")  # the first by path is kept
    shutil.copy(a / "xvid.avi", b / "h264-under-b.mp4")  # the same bytes under two labels
    expected["a/xvid.avi"] = "label_conflict"
    (a / "symlinked.mp4").symlink_to(outside)
    expected["a/symlinked.mp4"] = (
        "readable"  # a link out of the root: quarantined, never opened (a manifest's rule too)
    )
    (data / "etc").symlink_to(outside.parent, target_is_directory=True)  # a label folder leading out: never walked
    expected["etc"] = "readable"
    (a / "dangling-link.mp4").symlink_to(data / "nowhere.mp4")  # inside the root, to nothing
    return data, expected


def test_every_good_clip_is_accepted_and_every_defect_quarantined_for_its_reason(corpus, tmp_path: Path):
    data, expected = corpus
    before = _fingerprint(data)
    summary = validate_dataset(data, tmp_path / "catalog", ValidationParams(), tmp_path / "docs")

    manifest = pd.read_csv(summary.catalog)
    quarantine = pd.read_csv(summary.quarantine)
    verdicts = manifest.set_index("path")["status"]
    assert set(verdicts.index) == set(expected)
    for path, check in expected.items():
        if check is None:
            assert verdicts[path] != "quarantined", (path, quarantine[quarantine["path"] == path].to_dict("records"))
        else:
            failed = set(quarantine.loc[quarantine["path"] == path, "check"])
            assert check in failed, (path, failed)
    accepted = pd.read_csv(summary.accepted_table)
    assert set(accepted["path"]) == {p for p, check in expected.items() if check is None}
    assert _fingerprint(data) == before  # nothing moved, deleted or changed
    assert summary.data_docs is not None and summary.data_docs.is_file()
    assert "vidops_clips" in summary.data_docs.read_text()


def test_reasons_are_precise(corpus, tmp_path: Path):
    data, _ = corpus
    summary = validate_dataset(data, tmp_path / "catalog", ValidationParams())
    reasons = pd.read_csv(summary.quarantine).groupby("path")["reason"].apply(" | ".join)
    assert "empty file" in reasons["a/empty.mp4"]
    assert "audio only: aac" in reasons["a/audio-only.m4a"]
    assert "truncated" in reasons["b/mdat-cut-short.mp4"]
    assert "broken symlink" in reasons["a/dangling-link.mp4"]
    assert (
        "path is outside the dataset root" in reasons["a/symlinked.mp4"]
        and "a symbolic link leads to" in reasons["etc"]
    )
    assert "duration 0.04 s is outside [0.5, 600.0] s" in reasons["b/one-frame.mp4"]
    assert "width 7680 px is outside [32, 4096] px" in reasons["b/8k.mp4"]
    assert "byte-identical to a/h264.mp4 (same label)" in reasons["a/z-copy-of-h264.mp4"]
    assert "labelled b: label conflict" in reasons["a/xvid.avi"]
    assert "labelled a: label conflict" in reasons["b/h264-under-b.mp4"]


def test_probe_reads_every_fact(corpus):
    data, _ = corpus
    rotated = probe_clip(data / "a" / "rotated.mp4")
    assert rotated["rotation"] == 90 and rotated["readable"]
    vfr = probe_clip(data / "a" / "vfr.mp4")
    assert vfr["vfr"] and vfr["frames"] == 25 and vfr["duration_s"] == pytest.approx(1.2, abs=0.05)
    gop = probe_clip(data / "b" / "long gop.mp4")
    assert gop["keyframe_interval"] == 50 and not gop["vfr"]
    ten = probe_clip(data / "b" / "10bit.mp4")
    assert ten["pix_fmt"] == "yuv420p10le" and len(ten["phash"]) == 48
    assert probe_clip(data / "b" / "8k.mp4")["width"] == 7680


def test_a_file_that_cannot_be_opened_is_quarantined_not_raised(tmp_path: Path):
    row = probe_clip(tmp_path)  # a folder named like a clip: open() fails as it does without permission
    assert not row["readable"] and row["error"] == "cannot read: Is a directory"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_file_is_quarantined(tmp_path: Path):
    clip = encode(tmp_path / "locked.mp4")
    clip.chmod(0)
    assert "cannot read: Permission denied" in probe_clip(clip)["error"]


def test_audio_is_checked_only_when_the_task_needs_it(tmp_path: Path):
    data = tmp_path / "sync"
    for first, label in ((0, "x"), (10, "y")):  # seeds apart: the same noise under two labels is a label conflict
        encode(data / label / "synced.mp4", audio_s=1.0, seed=first)
        encode(data / label / "silent.mp4", seed=first + 1)
        encode(data / label / "drifting.mp4", audio_s=0.2, seed=first + 2)
        encode(data / label / "synced2.mp4", audio_s=1.0, seed=first + 3)
    relaxed = validate_dataset(data, tmp_path / "c1", ValidationParams())
    assert relaxed.quarantined == 0
    strict = validate_dataset(data, tmp_path / "c2", ValidationParams(require_audio=True))
    quarantine = pd.read_csv(strict.quarantine)
    assert set(quarantine.loc[quarantine["check"] == "audio_present", "path"]) == {"x/silent.mp4", "y/silent.mp4"}
    assert set(quarantine.loc[quarantine["check"] == "av_sync", "path"]) == {"x/drifting.mp4", "y/drifting.mp4"}


@pytest.fixture(scope="module")
def half_audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of clips with sound, one clip in each with audio half as long as its 1 s of video."""
    data = tmp_path_factory.mktemp("half") / "data"
    for first, label in ((0, "x"), (10, "y")):
        for i in range(3):
            encode(data / label / f"full{i}.mp4", audio_s=1.0, seed=first + i)
        encode(data / label / "half.mp4", audio_s=0.5, seed=first + 5)
    return data


def test_audio_half_as_long_as_the_video_warns_where_extraction_uses_audio(half_audio: Path, tmp_path: Path):
    params = load_params()  # extract.classification.audio is logmel
    summary = validate_dataset(
        half_audio, tmp_path / "c", validation_checks(params, "classification"), tmp_path / "docs"
    )
    assert (summary.accepted, summary.warned, summary.quarantined) == (8, 2, 0)
    warnings = pd.read_csv(tmp_path / "c" / "warnings.csv").set_index("path")
    assert set(warnings.index) == {"x/half.mp4", "y/half.mp4"}
    assert set(warnings["check"]) == {"av_sync"}
    assert warnings.loc["x/half.mp4", "reason"].startswith("audio 0.50 s and video 1.00 s differ by 0.50 s")
    silent = load_params(None, ["extract.classification.audio=none"])
    assert validate_dataset(half_audio, tmp_path / "c2", validation_checks(silent, "classification")).warned == 0


def test_the_sync_task_quarantines_what_classification_warns_of(half_audio: Path, tmp_path: Path):
    summary = validate_dataset(half_audio, tmp_path / "c", validation_checks(load_params(), "sync"))
    quarantine = pd.read_csv(summary.quarantine)
    assert set(quarantine.loc[quarantine["check"] == "av_sync", "path"]) == {"x/half.mp4", "y/half.mp4"}
    assert summary.warned == 0 and summary.quarantined == 2


def test_data_docs_work_offline_list_each_run_and_fail_only_for_critical_findings(half_audio: Path, tmp_path: Path):
    checks, docs = validation_checks(load_params(), "classification"), tmp_path / "docs"
    validate_dataset(half_audio, tmp_path / "c", checks, docs)  # warnings only
    (half_audio / "x" / "broken.mp4").write_bytes(b"not a video")
    try:
        last = validate_dataset(half_audio, tmp_path / "c", checks, docs)
    finally:
        (half_audio / "x" / "broken.mp4").unlink()
    assert last.data_docs == docs / "index.html"
    index = last.data_docs.read_text()
    assert not re.search(r"https?://", index)  # no stylesheet, script or font from a CDN
    assert "<script" not in index and "<link" not in index
    runs = re.findall(
        r'<tr><td><a href="(runs/[^"]+\.html)">[^<]+</a></td><td><span class="s \w+">([^<]+)</span>', index
    )
    assert [status for _, status in runs] == ["failed", "passed with warnings"]  # newest first
    for page, _ in runs:
        assert (docs / page).is_file()
    assert "x/broken.mp4" in index and "unreadable" in index
    first = (docs / runs[1][0]).read_text()
    assert '<span class="s warnings">passed with warnings</span>' in first and 'class="s failed"' not in first


def test_probing_is_incremental(tmp_path: Path, tiny_dataset: Path):
    data = tmp_path / "raw"
    shutil.copytree(tiny_dataset, data)
    (data / "rotate" / "empty.mp4").write_bytes(b"")  # unreadable rows are looked at again each time
    first = validate_dataset(data, tmp_path / "catalog", ValidationParams())
    written = first.catalog.read_text()
    again = validate_dataset(data, tmp_path / "catalog", ValidationParams())
    assert (first.probed, first.reused) == (22, 0)
    assert (again.probed, again.reused) == (1, 21)
    assert again.catalog.read_text() == written  # reused rows read back as they were written: no 96.0, no lost NA
    encode(data / "rotate" / "rotate_000.mp4", seed=5)  # new content under an old name
    encode(data / "rotate" / "new.mp4", seed=6)
    changed = validate_dataset(data, tmp_path / "catalog", ValidationParams())
    assert (changed.probed, changed.reused) == (3, 20)
    row = pd.read_csv(tmp_path / "catalog" / CATALOG).set_index("path").loc["rotate/rotate_000.mp4"]
    assert row["frames"] == 25 and row["width"] == 64
    # moved in over an old clip, its size and mtime kept (cp -p, rsync -t): another inode, so probed again
    clip, other = data / "rotate" / "rotate_001.mp4", data / "rotate" / "new.mp4"
    stat = clip.stat()
    replacement = data / "rotate" / ".incoming"
    shutil.copyfile(other, replacement)
    with replacement.open("r+b") as f:  # the same size as the clip it replaces
        f.truncate(stat.st_size)
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, clip)
    moved = validate_dataset(data, tmp_path / "catalog", ValidationParams())
    assert (moved.probed, moved.reused) == (2, 21)  # it, and the empty file as ever
    for path in sorted(data.glob("*/*.mp4")):  # as `dvc checkout` leaves it: each file rewritten
        copy = path.with_name(f".{path.name}")
        shutil.copyfile(path, copy)
        os.replace(copy, path)
    relinked = validate_dataset(data, tmp_path / "catalog", ValidationParams())
    assert (relinked.probed, relinked.reused) == (
        1,
        22,
    )  # the same bytes under a new inode and mtime: hashed, not probed


def test_manifest_csv_with_groups_splits_and_a_path_outside_the_root(tmp_path: Path):
    data = tmp_path / "ds"
    rows = []
    for label in ("run", "walk"):
        for group in range(4):
            for clip in range(2):
                name = f"v_{label}_g{group:02d}_c{clip:02d}.mp4"
                encode(data / "videos" / name, seed=len(rows))
                rows.append({"path": f"videos/{name}", "label": label})
    rows.append({"path": "../../etc/passwd", "label": "run"})
    (data / "clips.csv").write_text(pd.DataFrame(rows).to_csv(index=False))

    summary = validate_dataset(data / "clips.csv", tmp_path / "catalog", ValidationParams())
    quarantine = pd.read_csv(summary.quarantine)
    assert "path is outside the dataset root" in quarantine.set_index("path").loc["../../etc/passwd", "reason"]
    accepted = pd.read_csv(summary.accepted_table)
    assert accepted["group"].str.fullmatch(r"g0\d").all()  # UCF101-style groups from the file names
    assert (accepted.groupby("group")["split"].nunique() == 1).all()  # no group in two splits
    assert set(accepted.loc[accepted["split"] == "test", "label"]) == {"run", "walk"}


def test_a_given_split_that_leaks_a_group_quarantines_its_test_side(tmp_path: Path):
    data = tmp_path / "ds"
    rows = []
    for label in ("a", "b"):
        for i in range(4):
            encode(data / f"{label}{i}.mp4", seed=len(rows))
            rows.append(
                {
                    "path": f"{label}{i}.mp4",
                    "label": label,
                    "group": f"{label}{i // 2}",
                    "split": "test" if i in (1, 3) else "train",
                }
            )
    (data / "clips.csv").write_text(pd.DataFrame(rows).to_csv(index=False))
    summary = validate_dataset(data / "clips.csv", tmp_path / "catalog", ValidationParams())
    quarantine = pd.read_csv(summary.quarantine)
    assert set(quarantine.loc[quarantine["check"] == "group_leak", "path"]) == {"a1.mp4", "a3.mp4", "b1.mp4", "b3.mp4"}


def test_splits_are_stratified_deterministic_and_group_aware(tiny_dataset: Path):
    manifest = build_catalog(tiny_dataset).table
    split = assign_splits(manifest, 0.25)
    assert (split.groupby("label")["split"].apply(lambda s: (s == "test").sum()) == 1).all()
    shuffled = assign_splits(manifest.sample(frac=1, random_state=0), 0.25)
    assert split.set_index("path")["split"].equals(shuffled.set_index("path")["split"].loc[split["path"]])


def test_a_bad_dataset_argument_is_a_clear_error(tmp_path: Path):
    with pytest.raises(VidopsError, match="no such dataset"):
        list_sources(tmp_path / "nope")
    with pytest.raises(VidopsError, match="no clips found"):
        list_sources(tmp_path)
    (tmp_path / "m.csv").write_text("file,label\na.mp4,x\n")
    with pytest.raises(VidopsError, match="missing column"):
        list_sources(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("path,label,split\na.mp4,x,val\n")
    with pytest.raises(VidopsError, match="column split holds"):
        list_sources(tmp_path / "m.csv")


def test_a_class_below_its_minimum_fails_and_says_which(tmp_path: Path, tiny_dataset: Path):
    dataset = tmp_path / "raw"
    shutil.copytree(tiny_dataset, dataset)
    for clip in list((dataset / "zoom_out").iterdir())[1:]:
        clip.write_bytes(b"broken")
    catalog = tmp_path / "catalog"
    with pytest.raises(VidopsError, match="zoom_out has 1"):
        validate_dataset(dataset, catalog, ValidationParams())
    assert (catalog / "quarantine.csv").is_file()  # the why is written down
    assert not (catalog / ACCEPTED).exists()  # and nothing looks ready to extract


def test_a_landed_clip_is_told_from_the_dataset_by_content_and_perceptual_hash():
    from vidops.components.validation import twins_in

    h = lambda words: "".join(f"{w:016x}" for w in words)
    existing = pd.DataFrame(
        {
            "path": ["a/old.mp4", "b/other.mp4"],
            "sha256": ["s1", "s2"],
            "phash": [h((1, 2, 3)), h((2**64 - 1, 0, 2**64 - 1))],
        }
    )
    landed = pd.DataFrame(
        {
            "path": ["a/copy.mp4", "a/reencoded.mp4", "b/new.mp4", "a/old.mp4"],
            "sha256": ["s1", "s9", "s8", "s1"],
            "phash": [h((1, 2, 3)), h((1, 2, 3 ^ 0b111)), h((0, 2**64 - 1, 2**64 - 1)), h((1, 2, 3))],
        }
    )
    twins = twins_in(landed, existing, max_bits=6)
    assert twins == {
        "a/copy.mp4": "byte-identical to a/old.mp4, already in the dataset",
        "a/reencoded.mp4": "looks like a/old.mp4 (perceptual hash), already in the dataset",
    }  # a new clip is no twin; nor is a clip landed again under its own name (ingest counts it as already in)

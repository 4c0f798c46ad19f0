"""Both dataset forms: a folder laid out <label>/<clip>, or a folder whose manifest.csv lists its clips (path, label
[, group, split]), through the stages, `vidops stage` under DVC, ingest, and every way a manifest can be wrong."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import TINY
from corpus import encode
from test_versioning import s3, s3_client, use_remote  # noqa: F401 (s3: the SeaweedFS fixture)
from vidops.components import ingest, versioning
from vidops.components.catalog import DATASET_MANIFEST, list_sources
from vidops.components.errors import VidopsError
from vidops.components.layout import ACCEPTED, Layout
from vidops.components.params import Params, ValidationParams, load_params
from vidops.components.validation import validate_dataset

REPO = Path(__file__).resolve().parents[1]


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _listed_project(root: Path, generated: Path) -> tuple[Layout, Params, pd.DataFrame]:
    """A project whose classification dataset data/raw/listed/ holds the generated clips under opaque names in nested
    folders, labelled and split by its manifest.csv (the first clip of each label is test), plus one clip it leaves
    out."""
    layout = Layout(root)
    folder = layout.raw("listed")
    rows = []
    for n, clip in enumerate(sorted(generated.glob("*/*.mp4"))):
        path = f"batch{n % 2}/day{n % 3}/clip_{n:03d}.mp4"
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, folder / path)
        first = not any(row["label"] == clip.parent.name for row in rows)
        rows.append({"path": path, "label": clip.parent.name, "split": "test" if first else "train"})
    (folder / "unlisted").mkdir()
    shutil.copy(folder / rows[0]["path"], folder / "unlisted" / "left_out.mp4")  # in the folder, not in the dataset
    manifest = pd.DataFrame(rows)
    manifest.to_csv(folder / DATASET_MANIFEST, index=False)
    params = load_params(None, [*TINY, "datasets.classification=listed", "tasks=[classification]"])
    # as a user would write it: one dataset named, so dvc.yaml's stages are made for that task alone
    (root / "params.yaml").write_text(
        yaml.safe_dump(params.to_yaml_dict() | {"datasets": {"classification": "listed"}})
    )
    return layout, params, manifest


def test_a_manifest_dataset_goes_through_validate_extract_train_and_evaluate(tmp_path: Path, tiny_dataset: Path):
    from vidops.components import stages

    layout, params, manifest = _listed_project(tmp_path, tiny_dataset)
    before = _fingerprint(layout.raw("listed"))
    for stage in (stages.validate, stages.extract, stages.train, stages.evaluate):
        stage(layout, params, "classification")

    accepted = pd.read_csv(layout.catalog("classification") / ACCEPTED).set_index("path").sort_index()
    given = manifest.set_index("path").sort_index()
    assert list(accepted.index) == list(given.index)  # every listed clip, and only those
    assert accepted["label"].equals(given["label"]) and accepted["split"].equals(
        given["split"]
    )  # labels and splits from the CSV
    index = pd.read_csv(layout.features("classification") / "index.csv").set_index("path").sort_index()
    assert (index["status"] == "ok").all() and index["split"].equals(given["split"])
    assert json.loads((layout.models("classification") / "labels.json").read_text()) == sorted(given["label"].unique())
    metrics = json.loads((layout.reports("classification") / "metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1
    assert _fingerprint(layout.raw("listed")) == before  # the input is never changed


@pytest.mark.slow
def test_a_bare_folder_becomes_a_dvc_project_and_dvc_runs_the_validate_stage_on_its_manifest_dataset(
    tmp_path: Path, tiny_dataset: Path, monkeypatch
):
    monkeypatch.setenv(
        "PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )  # `vidops`, as in an activated venv
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # the README's recipe: a folder with its dataset, no git, vidops's params.yaml (edited), dvc.yaml and components/
    layout, _, manifest = _listed_project(tmp_path / "project", tiny_dataset)
    shutil.copy(REPO / "dvc.yaml", layout.root / "dvc.yaml")
    shutil.copytree(REPO / "components", layout.root / "components", ignore=shutil.ignore_patterns("__pycache__"))
    pushed = subprocess.run(
        [sys.executable, "-m", "vidops", "data", "push"], cwd=layout.root, capture_output=True, text=True, timeout=600
    )
    assert pushed.returncode == 0, (pushed.stdout + pushed.stderr)[-3000:]
    assert not (layout.root / ".git").exists() and (layout.root / ".dvc").is_dir()  # dvc init --no-scm
    version = versioning.read_version(layout.raw("listed"))
    assert version.files == len(manifest) + 2  # the clips, the one left out, and manifest.csv: one unit for DVC
    assert versioning.remote_url(layout.root) == versioning.local_url("vidops")

    done = versioning.dvc(layout.root, "repro", "validate@classification", check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    accepted = pd.read_csv(layout.catalog("classification") / ACCEPTED)
    assert sorted(accepted["path"]) == sorted(manifest["path"]) and not _changed(layout)

    clip = layout.raw("listed") / manifest["path"].iloc[-1]
    clip.write_bytes(clip.read_bytes() + b"\0")  # one clip deep in the folder changes: DVC sees it
    assert versioning.current_version(layout.root, layout.raw("listed")) != version.md5
    assert _changed(layout)


def _changed(layout: Layout) -> bool:
    """Whether DVC says validate@classification is out of date because its dataset changed."""
    out = versioning.dvc(layout.root, "status", "--json", "validate@classification").stdout
    status = json.loads(out or "{}")
    return any("data/raw/listed" in json.dumps(entry) for entry in status.get("validate@classification", []))


def test_the_dataset_param_naming_a_csv_says_to_make_it_a_folder(tmp_path: Path):
    from vidops.components import stages

    layout = Layout(tmp_path)
    layout.raw("clips.csv").parent.mkdir(parents=True)
    layout.raw("clips.csv").write_text("path,label\na.mp4,x\n")
    params = load_params(None, ["datasets.classification=clips.csv"])
    with pytest.raises(
        VidopsError, match=r"clips\.csv: datasets\.classification .* names a CSV; a dataset is a folder.*manifest\.csv"
    ):
        stages.dataset(layout, params, "classification")
    with pytest.raises(VidopsError, match="no such dataset"):
        stages.dataset(layout, load_params(None, ["datasets.classification=absent"]), "classification")


@pytest.fixture
def listed_folder(tmp_path: Path) -> Path:
    """A folder with four good clips in two classes, a file beside it (outside), and a link inside that leads there."""
    folder = tmp_path / "ds"
    for n, name in enumerate(("a/1.mp4", "a/2.mp4", "b/1.mp4", "b/2.mp4")):
        encode(folder / "clips" / name, seed=n)
    encode(tmp_path / "outside.mp4", seed=9)
    (folder / "clips" / "link.mp4").symlink_to(tmp_path / "outside.mp4")
    (folder / "clips" / "empty-folder").mkdir()
    return folder


def _write(folder: Path, text: str) -> Path:
    (folder / DATASET_MANIFEST).write_text(text)
    return folder / DATASET_MANIFEST


def test_listed_files_that_are_missing_or_outside_the_folder_are_quarantined_with_the_reason(
    listed_folder: Path, tmp_path: Path
):
    good = "clips/a/1.mp4,a\nclips/a/2.mp4,a\n./clips/b/1.mp4,b\nclips/x/../b/2.mp4,b\n"
    bad = {
        "clips/missing.mp4": "listed in manifest.csv but there is no such file",
        "../outside.mp4": "path is outside the dataset root",
        str(tmp_path / "outside.mp4"): "path is outside the dataset root",
        "clips/link.mp4": "path is outside the dataset root .* \\(a symbolic link leads to .*outside.mp4\\)",
        "clips/empty-folder": "it is a folder, not a clip",
    }
    _write(listed_folder, "path,label\n" + good + "".join(f"{path},a\n" for path in bad))
    before = _fingerprint(listed_folder)
    summary = validate_dataset(listed_folder, tmp_path / "catalog", ValidationParams())

    reasons = pd.read_csv(summary.quarantine).groupby("path")["reason"].agg(" | ".join)
    assert sorted(reasons.index) == sorted(bad)
    for path, why in bad.items():
        assert re.search(why, reasons[path]), (path, reasons[path])
    accepted = pd.read_csv(summary.accepted_table)
    assert sorted(accepted["path"]) == [
        "clips/a/1.mp4",
        "clips/a/2.mp4",
        "clips/b/1.mp4",
        "clips/b/2.mp4",
    ]  # in their normal form
    assert _fingerprint(listed_folder) == before  # nothing in the input deleted or changed
    assert (tmp_path / "outside.mp4").is_file()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("file,label\nclips/a/1.mp4,a\n", "missing column\\(s\\) path; expected path, label"),
        ("path\nclips/a/1.mp4\n", "missing column\\(s\\) label"),
        ("path,label\n", "lists no clips"),
        ("", "not a readable CSV"),
        ("path,label\nclips/a/1.mp4,a\n,a\n", "empty path on line\\(s\\) 3"),
        ("path,label\nclips/a/1.mp4,a\nclips/a/2.mp4,\n", "empty label on line\\(s\\) 3"),
        (
            "path,label\nclips/a/1.mp4,a\nclips/a/2.mp4,a\n./clips/a/1.mp4,b\n",
            "listed more than once: clips/a/1.mp4 \\(lines 2, 4\\)",
        ),
        ("path,label,split\nclips/a/1.mp4,a,val\n", "column split holds \\['val'\\]"),
        ('path,label\n"clips/a/1.mp4,a\n', "not a readable CSV"),
    ],
)
def test_a_manifest_that_cannot_be_read_is_an_error_naming_the_file_and_what_is_wrong(
    listed_folder: Path, text: str, error: str
):
    csv = _write(listed_folder, text)
    with pytest.raises(VidopsError, match=f"^{re.escape(str(csv))}: .*{error}"):
        list_sources(listed_folder)


def test_the_form_is_decided_by_a_manifest_at_the_top_of_the_folder(tmp_path: Path):
    folder = tmp_path / "ds"
    encode(folder / "2024" / "a" / "1.mp4")
    with pytest.raises(VidopsError, match=r"no clips found .*or a manifest.csv listing them"):
        list_sources(folder)  # 2024/a/1.mp4 is one level too deep for the <label>/<clip> form
    _write(folder, "path,label,group\n2024/a/1.mp4,walk,g1\n")
    root, sources = list_sources(folder)
    assert root == folder and [(s["path"], s["label"], s["group"]) for s in sources] == [("2024/a/1.mp4", "walk", "g1")]
    (folder / "2024" / "any-name.csv").write_text("path,label\na/1.mp4,walk\n")
    assert (
        list_sources(folder / "2024" / "any-name.csv")[0] == folder / "2024"
    )  # a CSV by its path: its folder is the root


def test_ingest_copies_landed_clips_into_a_manifest_dataset_and_appends_their_rows(tmp_path: Path):
    dataset, staged = tmp_path / "ds", tmp_path / "staged"
    encode(dataset / "videos" / "one.mp4", seed=1)
    encode(dataset / "left" / "taken.mp4", seed=2)  # a different clip already at a landing clip's path
    original = (
        b"path,label,split\r\nvideos/one.mp4,left,test\r\nright/listed.mp4,right,\r\ndown/gone.mp4,down,train\r\n"
    )
    (dataset / DATASET_MANIFEST).write_bytes(original)
    encode(dataset / "right" / "listed.mp4", seed=4)
    landed = {"left/new.mp4": 5, "left/taken.mp4": 6, "right/stopped.mp4": 3, "right/listed.mp4": 7, "down/gone.mp4": 8}
    for clip, seed in landed.items():
        encode(staged / clip, seed=seed)
    shutil.copy(
        staged / "right" / "stopped.mp4", dataset / "right" / "stopped.mp4"
    )  # copied by an ingest that stopped before listing it

    added, skipped = ingest.add_clips(staged, list(landed), dataset)

    assert added == ["left/new.mp4", "right/stopped.mp4"]
    assert (
        "exists with other content" in skipped["left/taken.mp4"]
        and "exists with other content" in skipped["right/listed.mp4"]
    )
    assert "manifest.csv already lists down/gone.mp4 (its file is missing)" in skipped["down/gone.mp4"]
    assert not (dataset / "down" / "gone.mp4").exists()  # a row is never given another file
    text = (dataset / DATASET_MANIFEST).read_bytes()
    assert text.startswith(original)  # the rows there keep their bytes
    assert text[len(original) :] == b"left/new.mp4,left,\r\nright/stopped.mp4,right,\r\n"
    assert (dataset / "left" / "new.mp4").read_bytes() == (staged / "left" / "new.mp4").read_bytes()
    assert (dataset / "left" / "taken.mp4").read_bytes() != (
        staged / "left" / "taken.mp4"
    ).read_bytes()  # never overwritten
    sources = {s["path"]: s["label"] for s in list_sources(dataset)[1]}
    assert sources == {
        "videos/one.mp4": "left",
        "right/listed.mp4": "right",
        "down/gone.mp4": "down",
        "left/new.mp4": "left",
        "right/stopped.mp4": "right",
    }
    assert not list(dataset.rglob(".*tmp*"))  # no temporary file left

    again = ingest.add_clips(staged, ["left/new.mp4"], dataset)
    assert (
        again == ([], {"left/new.mp4": ingest.ALREADY_IN})
        and (dataset / DATASET_MANIFEST).read_bytes().count(b"left/new.mp4") == 1
    )


@pytest.mark.slow
def test_the_ingest_flow_adds_landed_clips_to_a_manifest_dataset_as_files_and_rows(
    prefect_api, s3, tiny_dataset: Path, tmp_path: Path, monkeypatch
):
    from vidops.flows.ingest import ingest as run_ingest

    for name, value in s3.items():
        monkeypatch.setenv(name, value)
    layout, params, _manifest = _listed_project(tmp_path / "project", tiny_dataset)
    rule = {
        "task": "classification",
        "landing": "s3://vidops/listed/landing",
        "processed": "s3://vidops/listed/processed",
        "quarantine": "s3://vidops/listed/quarantine",
        "commit": False,
    }
    (layout.root / "params.yaml").write_text(yaml.safe_dump(params.to_yaml_dict() | {"ingest": rule}))
    versioning.init(layout.root)
    use_remote(layout.root, s3, "dvc-listed")
    before = versioning.add(layout.root, layout.raw("listed"))
    listing = (layout.raw("listed") / DATASET_MANIFEST).read_bytes()
    client = s3_client(s3)
    client.upload_file(
        str(encode(tmp_path / "new.mp4", seed=21, size=(64, 64))), "vidops", "listed/landing/rotate/new_rotate.mp4"
    )
    client.put_object(Bucket="vidops", Key="listed/landing/rotate/notes.mp4", Body=b"meeting notes, not a video")

    result = run_ingest(root=str(layout.root))

    assert result.added == ["rotate/new_rotate.mp4"] and "unreadable" in result.quarantined["rotate/notes.mp4"]
    text = (layout.raw("listed") / DATASET_MANIFEST).read_bytes()
    assert text == listing + b"rotate/new_rotate.mp4,rotate,\n"  # path, label, and an empty split for vidops to fill
    assert (layout.raw("listed") / "rotate" / "new_rotate.mp4").read_bytes() == (tmp_path / "new.mp4").read_bytes()
    assert not (layout.raw("listed") / "rotate" / "notes.mp4").exists()
    after = versioning.read_version(layout.raw("listed"))
    assert result.version == after.md5 != before.md5 and after.files == before.files + 1
    assert {s["path"]: s["label"] for s in list_sources(layout.raw("listed"))[1]}["rotate/new_rotate.mp4"] == "rotate"

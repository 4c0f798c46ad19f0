"""Captions, for a task whose clips need them: the captions file read strictly, checked with the clips in validation
(each bad case with its reason), and carried to the features keyed as the index is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from vidops.components import tasks
from vidops.components.captions import read_captions_csv
from vidops.components.errors import VidopsError
from vidops.components.generate import generate_dataset
from vidops.components.inputs import read_captions
from vidops.components.layout import ACCEPTED, CAPTIONS_FILE, CATALOG, INDEX_TABLE, Layout
from vidops.components.parallel import in_threads
from vidops.components.params import (
    ExtractParams,
    FitParams,
    GenerateParams,
    ModelRegistryParams,
    ValidationParams,
    load_params,
)
from vidops.components.tasks import TaskDefaults, TaskSpec
from vidops.components.validation import validate_dataset

NAME = "described"  # a task whose clips need captions; only its data side runs here


def untrained(*args: Any) -> Any:
    raise AssertionError("only validation and extraction run in these tests")


SPEC = TaskSpec(
    NAME,
    TaskDefaults(
        dataset="demo-described",
        extract=ExtractParams(frames=4, size=16, audio="none", workers=1),
        train=FitParams(),
        registry=ModelRegistryParams(model_name="vidops-described", metric="cider_d", floor=0.0),
        generate=GenerateParams(clips_per_class=3, size=32, duration_s=0.6),
    ),
    train=untrained,
    evaluate=untrained,
    metrics=("cider_d",),
    headline=untrained,
    input_example=untrained,
    predict=untrained,
    captioned=True,
    generate=tasks.spec("captioning").generate,
)


@pytest.fixture
def described():
    tasks.register(SPEC)
    yield SPEC
    tasks.unregister(NAME)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Captioned demo clips, 3 of each motion; tests copy them before changing anything."""
    return generate_dataset(tmp_path_factory.mktemp("captioned") / "data", "captioning", SPEC.defaults.generate).root


def _captions(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / CAPTIONS_FILE, dtype=str, keep_default_na=False)


def test_each_bad_caption_is_dropped_or_quarantined_for_its_reason_and_the_rest_reach_the_features(
    described, generated, tmp_path
):
    layout = Layout(tmp_path)
    params = load_params(None, [f"tasks=[{NAME}]", "validation.max_caption_words=12"])
    data = layout.raw(SPEC.defaults.dataset)
    shutil.copytree(generated, data)
    captions = _captions(data)
    uncaptioned, emptied, with_empty, with_long = (
        "move_left/move_left_000.mp4",
        "rotate/rotate_001.mp4",
        "zoom_in/zoom_in_002.mp4",
        "move_up/move_up_000.mp4",
    )
    captions = captions[~captions["path"].isin([uncaptioned, emptied])]
    extra = pd.DataFrame(
        {
            "path": [emptied, with_empty, with_empty, with_long, "move_up/gone.mp4", "move_up/gone.mp4"],
            "caption": [
                "  ",
                "",
                "?! -",
                " ".join(["a red square moves up."] * 3),
                "a red square moves up",
                "the red box rises",
            ],
        }
    )
    text = pd.concat([captions, extra]).to_csv(index=False)
    (data / CAPTIONS_FILE).write_text(
        text.replace("\n", "\n\n", 1)
    )  # a blank line after the header: skipped, lines still counted
    first_extra = len(captions) + 3  # the header, the blank line, the captions kept, then the extra rows

    from vidops.components import stages

    summary = stages.validate(layout, params, NAME)
    catalog = layout.catalog(NAME)
    quarantine = pd.read_csv(catalog / "quarantine.csv").groupby("path")["check"].apply(set)
    assert quarantine.to_dict() == {uncaptioned: {"no_caption"}, emptied: {"no_caption"}}
    reasons = pd.read_csv(catalog / "quarantine.csv").set_index("path")["reason"]
    assert reasons[uncaptioned] == f"no caption in {CAPTIONS_FILE}"
    assert reasons[emptied] == f"every caption of it in {CAPTIONS_FILE} is dropped (line {first_extra})"
    warnings = pd.read_csv(catalog / "warnings.csv")
    found = {(row.path, row.check): row.reason for row in warnings.itertuples() if row.check != "near_duplicate"}
    assert found == {
        (emptied, "empty_caption"): f"empty caption on line {first_extra} of {CAPTIONS_FILE}: dropped",
        # punctuation only is no word, as the captioner reads words (text.words)
        (
            with_empty,
            "empty_caption",
        ): f"empty caption on lines {first_extra + 1}, {first_extra + 2} of {CAPTIONS_FILE}: dropped",
        (
            with_long,
            "long_caption",
        ): f"caption over 12 words on line {first_extra + 3} (15 words) of {CAPTIONS_FILE}: dropped",
        ("move_up/gone.mp4", "caption_orphan"): (
            f"named on lines {first_extra + 4}, {first_extra + 5} of {CAPTIONS_FILE}, but no clip of the dataset: "
            "its captions are ignored"
        ),
    }
    report = json.loads((catalog / "validation.json").read_text())
    assert report["by_reason"]["no_caption"] == 2 and report["by_reason"]["caption_orphan"] == 1
    assert summary.quarantined == 2 and summary.accepted == 19

    accepted = pd.read_csv(catalog / ACCEPTED)
    kept = _captions(catalog)
    assert tuple(kept.columns) == ("path", "caption")
    assert set(kept["path"]) == set(accepted["path"])  # every accepted clip has a caption, and only they do
    assert kept.to_dict("records") == captions.to_dict(
        "records"
    )  # the empty, long and orphan rows are gone, in the file's order

    (data / with_empty).write_bytes(b"changed since validation")  # accepted, but it fails extraction
    result = stages.extract(layout, params, NAME, mapper=in_threads)
    index = pd.read_csv(layout.features(NAME) / INDEX_TABLE, keep_default_na=False)
    by_clip = read_captions(layout.features(NAME))
    assert sum(result.clips.values()) == 18 and set(by_clip) == set(index.loc[index["status"] == "ok", "path"])
    assert by_clip == kept[kept["path"] != with_empty].groupby("path", sort=False)["caption"].apply(list).to_dict()

    assert stages.outputs_present("extract", layout, NAME)
    before = stages.fingerprint("extract", layout, params, NAME)
    (catalog / CAPTIONS_FILE).write_text(
        kept.iloc[1:].to_csv(index=False)
    )  # one caption fewer: extraction's input changed
    assert stages.fingerprint("extract", layout, params, NAME) != before
    (layout.features(NAME) / CAPTIONS_FILE).unlink()
    assert not stages.outputs_present("extract", layout, NAME)


def test_a_captioned_task_without_captions_stops_before_probing_and_names_the_file(described, generated, tmp_path):
    from vidops.components import stages

    layout = Layout(tmp_path)
    params = load_params(None, [f"tasks=[{NAME}]"])
    data = layout.raw(SPEC.defaults.dataset)
    shutil.copytree(generated, data)
    (data / CAPTIONS_FILE).unlink()
    with pytest.raises(
        VidopsError,
        match=(
            rf"{data}: this task needs captions and there is no {data / CAPTIONS_FILE}: "
            r"a CSV with columns path, caption"
        ),
    ):
        stages.validate(layout, params, NAME)
    assert not layout.catalog(NAME).exists()


def test_a_task_without_captions_ignores_them_and_its_catalog_lists_none(generated, tmp_path):
    validate_dataset(generated, tmp_path / "catalog", ValidationParams())
    assert _captions(tmp_path / "catalog").empty
    assert "no_caption" not in pd.read_csv(tmp_path / "catalog" / CATALOG).columns


def test_captions_are_read_strictly(tmp_path: Path):
    file = tmp_path / CAPTIONS_FILE
    file.write_bytes(b'path,caption\n\na.mp4,a red square rises\n./b.mp4,"the blue oval, it spins"\n\n')
    table = read_captions_csv(file)
    assert table.to_dict("records") == [
        {"path": "a.mp4", "caption": "a red square rises", "line": 3},
        {"path": "b.mp4", "caption": "the blue oval, it spins", "line": 4},
    ]  # blank lines skipped, their lines counted; paths in a manifest's normal form
    file.write_bytes(b"path,caption\na.mp4,a red square\nb.mp4,caf\xe9 au lait\n")
    with pytest.raises(VidopsError, match=rf"{file}: not UTF-8 text: line 3 holds the byte 0xe9"):
        read_captions_csv(file)
    file.write_text("clip,text\na.mp4,a red square\n")
    with pytest.raises(VidopsError, match=rf"{file}: missing column\(s\) path, caption"):
        read_captions_csv(file)
    file.write_text("path,caption\na.mp4,the red box, it rises\n")
    with pytest.raises(VidopsError, match="line 2 has 3 fields where the header has 2"):
        read_captions_csv(file)
    file.write_text("path,caption\n,a red square\n")
    with pytest.raises(VidopsError, match="empty path on line"):
        read_captions_csv(file)

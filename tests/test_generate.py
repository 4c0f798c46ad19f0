import itertools
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from vidops.components.catalog import DATASET_MANIFEST, SOURCE_COLUMNS
from vidops.components.errors import VidopsError
from vidops.components.generate import MARKER, MOTIONS, SHAPES, generate_dataset, motion_path
from vidops.components.layout import CAPTIONS_FILE
from vidops.components.media import AUDIO_RATE
from vidops.components.params import GenerateParams
from vidops.components.tasks.captioning.generate import (
    COLOURS,
    HELD_OUT_COMBINATIONS,
    TEMPLATES,
    VOCABULARY,
    WORDS,
    caption_attributes,
    captioned_plan,
)
from vidops.components.tasks.sync.generate import LABEL as SYNC_LABEL


def _decode_all(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_clips_are_real_h264_aac_with_the_asked_shape(tiny_dataset: Path, tiny_params):
    p = tiny_params.generate.classification
    labels = sorted(d.name for d in tiny_dataset.iterdir() if d.is_dir())
    assert labels == sorted(MOTIONS)
    clips = sorted(tiny_dataset.rglob("*.mp4"))
    assert len(clips) == len(MOTIONS) * p.clips_per_class
    with av.open(str(clips[0])) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264"
        assert (video.codec_context.width, video.codec_context.height) == (p.size, p.size)
        assert video.average_rate == p.fps
        assert audio.codec_context.name == "aac"
        assert (audio.rate, audio.channels) == (AUDIO_RATE, 1)
    assert len(_decode_all(clips[0])) == round(p.duration_s * p.fps)
    assert (tiny_dataset / MARKER).is_file()


def test_same_seed_same_frames_other_seed_other_frames(tmp_path: Path):
    params = GenerateParams(clips_per_class=1, duration_s=0.4, size=32)
    first, *again = (generate_dataset(tmp_path / name, "classification", params).root for name in "abcd")
    other = generate_dataset(tmp_path / "other", "classification", params.model_copy(update={"seed": 1})).root
    for clip in sorted(p.relative_to(first) for p in first.rglob("*.mp4")):
        assert all((first / clip).read_bytes() == (copy / clip).read_bytes() for copy in again), clip
        assert not np.array_equal(_decode_all(first / clip), _decode_all(other / clip))


@pytest.mark.parametrize(
    ("label", "changes"),
    [
        ("move_left", "x-"),
        ("move_right", "x+"),
        ("move_up", "y-"),
        ("move_down", "y+"),
        ("rotate", "angle"),
        ("zoom_in", "radius+"),
        ("zoom_out", "radius-"),
    ],
)
def test_each_class_is_a_motion_that_only_the_order_of_frames_shows(label: str, changes: str):
    t = np.arange(50) / 25
    x, y, radius, angle = motion_path(label, np.random.default_rng(0), 96, t)
    moving = {"x": x, "y": y, "radius": radius, "angle": angle}
    name, sign = changes.rstrip("+-"), changes[len(changes.rstrip("+-")) :]
    steps = np.diff(moving.pop(name))
    assert np.all(steps > 0) or np.all(steps < 0)
    if sign:
        assert np.all(steps > 0) if sign == "+" else np.all(steps < 0)
    for other in moving.values():  # everything else holds still
        assert np.allclose(other, other[0])


def test_sync_clips_are_louder_when_the_mouth_is_open(tmp_path: Path):
    root = generate_dataset(tmp_path / "sync", "sync", GenerateParams(clips_per_class=1, duration_s=2.0, size=64)).root
    clip = next((root / SYNC_LABEL).glob("*.mp4"))
    with av.open(str(clip)) as container:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    frames = _decode_all(clip).astype(float)
    opening = (frames.sum(axis=3) < 150).sum(axis=(1, 2))  # dark pixels of the open mouth, per frame
    per_frame = AUDIO_RATE // 25
    loudness = np.array([np.sqrt(np.mean(audio[i * per_frame : (i + 1) * per_frame] ** 2)) for i in range(len(frames))])
    assert np.corrcoef(opening, loudness)[0, 1] > 0.6


def test_refuses_a_non_empty_folder_and_leaves_it_alone(tmp_path: Path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    with pytest.raises(VidopsError, match="exists and is not an empty folder"):
        generate_dataset(target, "classification", GenerateParams(clips_per_class=1))
    assert [p.name for p in target.iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no partial folder left behind


CAPTIONED = GenerateParams(clips_per_class=6, size=48, duration_s=0.4)  # 42 clips of 42 combinations


@pytest.fixture(scope="module")
def captioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("captioned") / "data", "captioning", CAPTIONED).root


def test_captioned_clips_are_listed_by_a_manifest_and_each_has_two_to_four_captions(captioned: Path):
    manifest = pd.read_csv(captioned / DATASET_MANIFEST, dtype=str, keep_default_na=False)
    assert tuple(manifest.columns) == SOURCE_COLUMNS and len(manifest) == 7 * CAPTIONED.clips_per_class
    assert sorted(str(p.relative_to(captioned)) for p in captioned.rglob("*.mp4")) == sorted(manifest["path"])
    assert (manifest["path"].str.split("/").str[0] == manifest["label"]).all() and set(manifest["label"]) == set(
        MOTIONS
    )
    assert (manifest["group"] == manifest["path"].str.removesuffix(".mp4")).all()  # each clip its own group
    captions = pd.read_csv(captioned / CAPTIONS_FILE, dtype=str, keep_default_na=False)
    assert tuple(captions.columns) == ("path", "caption") and set(captions["path"]) == set(manifest["path"])
    assert captions.groupby("path").size().between(2, 4).all()
    assert not captions.duplicated().any()  # a clip's captions are worded apart
    shown = {
        clip.path: {"shape": clip.shape, "colour": clip.colour, "motion": clip.label}
        for clip in captioned_plan(CAPTIONED)
    }
    for path, caption in zip(captions["path"], captions["caption"], strict=True):
        assert caption_attributes(caption) == shown[path], caption


def test_held_out_combinations_are_whole_and_leave_every_attribute_value_in_training(captioned: Path):
    manifest = pd.read_csv(captioned / DATASET_MANIFEST, dtype=str, keep_default_na=False)
    plan = {clip.path: clip for clip in captioned_plan(CAPTIONED)}
    manifest["combination"] = [plan[path].combination for path in manifest["path"]]
    assert set(manifest["split"]) == {"", "test"}
    held = set(manifest.loc[manifest["split"] == "test", "combination"])
    assert len(held) == round(HELD_OUT_COMBINATIONS * manifest["combination"].nunique()) > 0
    assert (
        manifest.loc[manifest["combination"].isin(held), "split"] == "test"
    ).all()  # whole: no clip of theirs in train
    train = manifest[manifest["split"] == ""]
    assert {value for combination in train["combination"] for value in combination} == set(SHAPES) | set(COLOURS) | set(
        MOTIONS
    )


def test_the_full_plan_holds_out_a_tenth_of_the_140_combinations_two_per_motion():
    plan = captioned_plan(GenerateParams(clips_per_class=80))
    combinations = {clip.combination for clip in plan}
    held = {clip.combination for clip in plan if clip.split == "test"}
    assert len(combinations) == 140 and len(held) == 14
    assert sorted(motion for _, _, motion in held) == sorted(MOTIONS * 2)
    assert {clip.combination: clip.split for clip in plan} == {
        clip.combination: clip.split for clip in plan[::-1]
    }  # whole
    assert captioned_plan(GenerateParams(clips_per_class=80, seed=1)) != plan


def test_the_shape_has_its_named_colour_over_a_grey_background(captioned: Path):
    named = np.array(list(COLOURS.values()), dtype=float)
    for clip in captioned_plan(CAPTIONED):
        frames = _decode_all(captioned / clip.path).astype(float)
        middle = frames[len(frames) // 2].reshape(-1, 3)
        # the background is grey (its channels about equal) and at most ~150; a named colour is saturated or bright
        shape = middle[(middle.max(axis=1) - middle.min(axis=1) > 60) | (middle.min(axis=1) > 190)]
        assert len(shape) >= 4, clip
        nearest = np.abs(named[:, None, :] - shape[None]).sum(axis=2).argmin(axis=0)
        assert list(COLOURS)[np.bincount(nearest, minlength=len(COLOURS)).argmax()] == clip.colour, clip


def test_every_wording_reads_back_as_its_attributes_and_the_vocabulary_is_small():
    for template, (colour, colours), (shape, shapes), (motion, motions) in itertools.product(
        TEMPLATES, WORDS["colour"].items(), WORDS["shape"].items(), WORDS["motion"].items()
    ):
        for words in itertools.product(colours, shapes, motions):
            caption = template.format(colour=words[0], shape=words[1], motion=words[2])
            assert caption_attributes(caption) == {"colour": colour, "shape": shape, "motion": motion}, caption
    assert caption_attributes("The RED box slides left.") == {"colour": "red", "shape": "square", "motion": "move_left"}
    assert caption_attributes("a red blue oval") == {"shape": "ellipse"}  # two colours named: none is told
    assert caption_attributes("something happens") == {}
    assert 40 <= len(VOCABULARY) <= 60

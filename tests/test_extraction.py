"""Exact frames, aligned audio, incremental shards, per-clip errors, the tf.data reader."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import faults
from corpus import encode, encode_flash_and_click, encode_indexed, read_index
from vidops.components import audio, extraction, inputs, stages
from vidops.components.audio import STEPS_PER_FRAME
from vidops.components.errors import VidopsError
from vidops.components.extraction import SHARDS, extract_clip, extract_features
from vidops.components.media import read_frames
from vidops.components.parallel import in_this_process
from vidops.components.params import ExtractParams, load_params
from vidops.components.sampling import ClipTooShort, dense, sample_indices, segments, uniform

VFR_MS = [int(t) for t in np.cumsum(np.random.default_rng(0).integers(20, 80, 60)) - 20]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """60-frame clips whose every frame shows its own index, in the encodings that trip seeking up."""
    d = tmp_path_factory.mktemp("indexed")
    return {
        "cfr": encode_indexed(d / "cfr.mp4", 60),
        "long gop, b-frames": encode_indexed(d / "gop.mp4", 60, options={"g": "250", "bf": "3"}),
        "short gop, b-frames": encode_indexed(d / "bfr.mp4", 60, options={"g": "12", "bf": "4", "b_strategy": "0"}),
        "vfr": encode_indexed(d / "vfr.mp4", 60, frame_times_ms=VFR_MS),
        "xvid avi": encode_indexed(d / "x.avi", 60, codec="mpeg4", container="avi", options={"bf": "2"}),
        "vp9 webm": encode_indexed(
            d / "x.webm", 60, codec="libvpx-vp9", container="webm", options={"deadline": "realtime", "cpu-used": "8"}
        ),
    }


def test_samplers_are_deterministic_and_in_range():
    assert uniform(50, 5).tolist() == [5, 15, 25, 35, 45]
    assert segments(50, 5, None).tolist() == uniform(50, 5).tolist()  # evaluation: centred
    a, b = segments(50, 5, np.random.default_rng(1)), segments(50, 5, np.random.default_rng(1))
    assert a.tolist() == b.tolist() and all(10 * i <= x < 10 * (i + 1) for i, x in enumerate(a))
    assert dense(50, 4, 2, 3).tolist() == [0, 2, 4, 6, 22, 24, 26, 28, 43, 45, 47, 49]


def test_a_clip_too_short_is_padded_with_a_flag_or_skipped():
    indices, padded = sample_indices(3, ExtractParams(frames=8), None)
    assert padded and indices.max() == 2 and len(indices) == 8
    with pytest.raises(ClipTooShort, match="3 frames, the dense sampler needs 8"):
        sample_indices(3, ExtractParams(sampler="dense", frames=8, short_clips="skip"), None)


@pytest.mark.parametrize("dense_decode", [False, True], ids=["sparse", "dense"])
@pytest.mark.parametrize("kind", ["cfr", "long gop, b-frames", "short gop, b-frames", "vfr", "xvid avi", "vp9 webm"])
def test_the_frames_returned_are_exactly_the_ones_asked_for(indexed, kind: str, dense_decode: bool):
    wanted = np.array([0, 3, 17, 18, 30, 31, 44, 58, 59, 59])
    got = read_frames(indexed[kind], wanted, 32, dense=dense_decode)
    assert got.frames.shape == (10, 32, 32, 3) and got.frames.dtype == np.uint8
    assert [read_index(f) for f in got.frames] == wanted.tolist()
    step_ms = np.array(VFR_MS) if kind == "vfr" else np.arange(60) * 40  # from the stream's first frame on
    assert np.allclose(got.times - got.times[0], (step_ms[wanted] - step_ms[0]) / 1000, atol=1e-3)


def test_rotation_is_applied_and_resize_policies_keep_or_fill(tmp_path: Path):
    image = np.zeros((48, 64, 3), np.uint8)
    image[:8, :8] = 255  # a white mark top-left of the stored picture
    clip = encode(tmp_path / "rot.mp4", images=[image] * 5, frames=5, rotation=90)
    upright = read_frames(clip, np.array([0]), 48, "letterbox").frames[0]
    # turned a quarter counter-clockwise for display: the mark goes bottom-left, the picture stands 64 x 48
    assert upright[43:47, 7:11].mean() > 150 and upright[:6].mean() < 20
    assert upright[:, :5].mean() < 20 and upright[:, -5:].mean() < 20  # letterbox bars left and right
    cropped = read_frames(clip, np.array([0]), 48, "crop").frames[0]
    assert cropped.shape == (48, 48, 3)


@pytest.mark.parametrize("delay", [0, 5])
def test_audio_lines_up_with_the_frame_it_belongs_to(tmp_path: Path, delay: int):
    """A flash at frame 20 and a click at the same instant; the audio stream starts `delay` frames late."""
    clip = encode_flash_and_click(tmp_path / "flash.mp4", flash=20, audio_delay_frames=delay)
    features = extract_clip(clip, 50, ExtractParams(sampler="dense", frames=50, size=32))
    assert features.audio.shape == (50, STEPS_PER_FRAME, 40) and features.has_audio
    assert int(np.argmax(features.frames.mean(axis=(1, 2, 3)))) == 20
    assert int(np.argmax(features.audio.mean(axis=(1, 2)))) == 20 + delay
    # frames before the audio starts are flagged, not faked (AAC's priming starts it a little early)
    assert not features.audio_ok[: max(delay - 1, 0)].any() and features.audio_ok[delay:].all()


def test_sparse_frames_decode_only_the_audio_around_them_for_the_whole_track_s_features(tmp_path: Path, monkeypatch):
    """A minute of audio sampled at 4 frames: a few tenths of a second decoded (a clip of hours stays bounded), same
    features."""
    clip = encode(tmp_path / "minute.mp4", fps=5, frames=300, audio_s=60.0)
    decoded = []
    push = audio._Resampler.push
    monkeypatch.setattr(
        audio._Resampler,
        "push",
        lambda self, frame: decoded.append(frame.samples / frame.sample_rate) or push(self, frame),
    )
    features = extract_clip(clip, 300, ExtractParams(frames=4, size=32))
    assert 0 < sum(decoded) < 2.0
    samples, start = audio.decode_audio(clip)
    whole, ok = audio.align(audio.features(samples, "logmel"), start, features.times, "logmel")
    assert np.allclose(features.audio, whole, atol=1e-3) and features.audio_ok.tolist() == ok.tolist() == [True] * 4


def test_ucf101_shaped_clips_probe_as_such_and_their_mp3_in_avi_extracts_like_the_whole_track(tmp_path: Path):
    from vidops.benchmarks.extract import write_ucf101_clips
    from vidops.components.probe import probe_clip

    (clip,) = write_ucf101_clips(tmp_path, 1, seconds=2.0, workers=1)
    probe = probe_clip(clip)
    assert probe["readable"] and (probe["video_codec"], probe["frames"], probe["keyframe_interval"], probe["vfr"]) == (
        "mpeg4",
        50,
        25,
        False,
    )
    features = extract_clip(clip, 50, ExtractParams(frames=8, size=32))
    samples, start = audio.decode_audio(clip)
    whole, ok = audio.align(audio.features(samples, "logmel"), start, features.times, "logmel")
    assert (
        features.has_audio
        and np.allclose(features.audio, whole, atol=0.15)
        and features.audio_ok.tolist() == ok.tolist()
    )


def test_a_clip_without_audio_is_flagged_not_an_error(tmp_path: Path):
    clip = encode(tmp_path / "silent.mp4")
    features = extract_clip(clip, 25, ExtractParams(frames=4, size=32, audio="mfcc"))
    assert not features.has_audio and not features.audio_ok.any()
    assert features.audio.shape == (4, STEPS_PER_FRAME, 13)


def test_extraction_is_incremental_and_keyed_by_content_and_params(project, tiny_params, monkeypatch):
    pooled = []  # the clips of each extraction that went to worker processes

    def in_processes(function, calls, workers):
        pooled.append(sum(len(jobs) for jobs, *_ in calls))
        return in_this_process(function, calls, workers)

    monkeypatch.setattr(extraction, "in_processes", in_processes)
    monkeypatch.setattr(extraction, "IN_PROCESS_CLIPS", 2)
    stages.validate(project, tiny_params, "classification")
    first = stages.extract(project, tiny_params, "classification")
    assert (first.extracted, first.reused, first.failed) == (21, 0, 0)
    assert pooled == [21]
    assert first.clips == {"train": 14, "test": 7}
    again = stages.extract(project, tiny_params, "classification")
    assert (again.extracted, again.reused) == (0, 21)

    damaged = sorted(project.features("classification").joinpath(SHARDS).glob("*.npz"))[0]
    damaged.write_bytes(damaged.read_bytes()[:100])  # a shard cut short is extracted again, not trusted
    assert stages.extract(project, tiny_params, "classification").extracted == 1

    encode(project.raw("demo") / "rotate" / "new.mp4", seed=42)
    stages.validate(project, tiny_params, "classification")
    one_more = stages.extract(project, tiny_params, "classification")
    assert (one_more.extracted, one_more.reused) == (1, 21)
    assert pooled == [21]  # a clip or two cost less than a worker's start: extracted in this process

    changed = load_params(project.root / "params.yaml", ["extract.classification.size=24"])
    redone = stages.extract(project, changed, "classification")
    assert (redone.extracted, redone.reused) == (22, 0)
    shards = list(project.features("classification").joinpath(SHARDS).glob("*.npz"))
    assert len(shards) == 22  # the old version's shards are gone
    split = inputs.open_split(project.features("classification"), "train", ("frames",))
    assert split.shapes["frames"] == (changed.extract.classification.frames, 24, 24, 3) and len(split.labels) == 15


def test_a_failing_clip_is_recorded_and_the_rest_extracted(project, tiny_params):
    stages.validate(project, tiny_params, "classification")
    victim = project.raw("demo") / "zoom_in" / "zoom_in_000.mp4"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])  # cut short after validation accepted it
    result = stages.extract(project, tiny_params, "classification")
    index = pd.read_csv(project.features("classification") / "index.csv", keep_default_na=False)
    failed = index.set_index("path").loc["zoom_in/zoom_in_000.mp4"]
    assert failed["status"] == "error" and "Invalid data" in failed["error"]
    assert result.failed == 1 and sum(result.clips.values()) == 20
    assert not any(p.name.startswith(".") for p in (project.features("classification") / SHARDS).iterdir())


@pytest.mark.slow
def test_a_killed_extraction_resumes_where_it_stopped(project, tiny_params):
    """`vidops stage extract` killed with -9 (its worker processes too) once shards are being written; the re-run keeps
    every whole shard and extracts the rest, and no shard is left twice or cut short."""
    stages.validate(project, tiny_params, "classification")
    features = project.features("classification")
    whole = lambda: sorted((features / SHARDS).glob("[!.]*.npz")) if (features / SHARDS).is_dir() else []
    command = faults.start("stage", "extract", "--task", "classification", "--root", str(project.root))
    faults.until(whole, "a first shard", command)
    faults.kill_group(command)
    assert faults.group_gone(command.pid), "a worker of the killed extraction lives on"
    kept = whole()
    assert (
        0 < len(kept) < 21 and not (features / "index.json").exists()
    )  # killed part-way: no index, nothing passes for whole

    again = faults.run("stage", "extract", "--task", "classification", "--root", str(project.root))
    assert again.returncode == 0, again.stderr
    assert f": {21 - len(kept)} extracted, {len(kept)} reused, 0 failed;" in again.stdout, again.stdout
    index = pd.read_csv(features / "index.csv", keep_default_na=False)
    assert json.loads((features / "index.json").read_text())["clips"] == {"train": 14, "test": 7}
    assert (
        sorted(p.name for p in (features / SHARDS).iterdir()) == sorted(index["shard"]) and len(index) == 21
    )  # no temporary file, none twice
    for shard in index["shard"]:
        with np.load(features / SHARDS / shard) as arrays:
            assert arrays["frames"].shape == (4, 32, 32, 3), shard  # every shard loads, whole


def test_the_tf_data_reader_yields_every_clip_with_its_label(project, tiny_params):
    stages.validate(project, tiny_params, "classification")
    stages.extract(project, tiny_params, "classification")
    features = project.features("classification")
    split = inputs.open_split(features, "test", ("frames",))
    frames = inputs.in_memory(split, "frames")
    read = list(inputs.read_split(split, ("frames",)).as_numpy_iterator())
    assert len(read) == len(split.labels) == 7
    assert all(np.array_equal(f, x) and y == label for (x, y), f, label in zip(read, frames, split.labels, strict=True))


def test_extract_without_a_validated_catalog_is_an_error(tmp_path: Path):
    with pytest.raises(VidopsError, match="run the validate stage first"):
        extract_features(tmp_path, tmp_path / "accepted.csv", tmp_path / "features", ExtractParams())
    with pytest.raises(VidopsError, match="run the extract stage first"):
        inputs.open_split(tmp_path / "features", "train", ("frames",))


def test_a_full_disk_stops_extraction_with_its_cause_and_the_rerun_completes(trained_project, tiny_params, tmp_path):
    import subprocess

    from vidops.components.parallel import in_threads

    features = tmp_path / "features"
    features.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(features)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("a small tmpfs cannot be mounted here (not root, or no mount permission)")
    dataset, accepted = (
        trained_project.raw(tiny_params.datasets.classification),
        trained_project.catalog("classification") / "accepted.csv",
    )
    params = tiny_params.extract.classification
    try:
        with pytest.raises(VidopsError, match=r"extraction stopped: No space left on device .not the clip's fault"):
            extract_features(dataset, accepted, features, params, mapper=in_threads)
        assert not (features / "index.json").exists()  # no index: nothing passes for a whole extraction
    finally:
        subprocess.run(["umount", str(features)], check=True)
    done = extract_features(
        dataset, accepted, features, params, mapper=in_threads
    )  # space again: the same call completes
    assert done.failed == 0 and sum(done.clips.values()) == len(pd.read_csv(accepted))


def test_a_rerun_trusts_unchanged_shards_without_opening_them_and_extracts_a_changed_one_again(
    project, tiny_params, monkeypatch
):
    from vidops.components import extraction
    from vidops.components.parallel import in_threads

    stages.validate(project, tiny_params, "classification")
    first = stages.extract(project, tiny_params, "classification")
    features = project.features("classification")
    opened = []
    read_flags = extraction._read_flags
    monkeypatch.setattr(
        extraction, "_read_flags", lambda shard, row: opened.append(shard.name) or read_flags(shard, row)
    )
    again = stages.extract(project, tiny_params, "classification", mapper=in_threads)
    assert (again.extracted, again.reused, opened) == (
        0,
        first.extracted,
        [],
    )  # every shard trusted by its size and mtime
    before = pd.read_csv(features / "index.csv", keep_default_na=False)

    damaged = features / SHARDS / before["shard"].iloc[0]
    damaged.write_bytes(damaged.read_bytes()[:300])  # another size: looked at again, found damaged, extracted anew
    third = stages.extract(project, tiny_params, "classification", mapper=in_threads)
    assert (third.extracted, third.reused, opened) == (1, first.extracted - 1, [damaged.name])
    after = pd.read_csv(features / "index.csv", keep_default_na=False)
    assert after[["path", "shard", "status", "padded", "has_audio"]].equals(
        before[["path", "shard", "status", "padded", "has_audio"]]
    )
    with np.load(damaged) as arrays:
        assert arrays["frames"].shape == (4, 32, 32, 3)  # whole again

from pathlib import Path

import av
import numpy as np
import pytest

from vidops.components.errors import VidopsError
from vidops.components.generate import MARKER, MOTIONS, SYNC_LABEL, _motion_path, generate_dataset
from vidops.components.media import AUDIO_RATE
from vidops.components.params import GenerateParams


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
    [("move_left", "x-"), ("move_right", "x+"), ("move_up", "y-"), ("move_down", "y+"),
     ("rotate", "angle"), ("zoom_in", "radius+"), ("zoom_out", "radius-")],
)  # fmt: skip
def test_each_class_is_a_motion_that_only_the_order_of_frames_shows(label: str, changes: str):
    t = np.arange(50) / 25
    x, y, radius, angle = _motion_path(label, np.random.default_rng(0), 96, t)
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

import json
from pathlib import Path

import numpy as np
import pytest

from components.errors import VidopsError
from components.extraction import extract_features, load_split, uniform_indices
from components.media import read_frames, write_clip
from components.params import ExtractParams
from flows import stages


@pytest.fixture(scope="module")
def counting_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 flat frames whose grey level is 4 x their index, so a decoded frame tells which one it is."""
    path = tmp_path_factory.mktemp("clips") / "counting.mp4"
    write_clip(path, (np.full((64, 64, 3), 4 * i, np.uint8) for i in range(50)), fps=25, audio=None)
    return path


def test_uniform_indices_take_the_centre_of_equal_segments():
    assert uniform_indices(50, 5).tolist() == [5, 15, 25, 35, 45]
    assert uniform_indices(4, 4).tolist() == [0, 1, 2, 3]


def test_read_frames_returns_exactly_the_asked_frames_resized(counting_clip: Path):
    wanted = np.array([0, 10, 37, 49])
    frames = read_frames(counting_clip, wanted, 32)
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    assert np.abs(frames.mean(axis=(1, 2, 3)) - 4 * wanted).max() < 3


def test_read_frames_past_the_end_is_an_error(counting_clip: Path):
    with pytest.raises(ValueError, match="decoded 1 of 2 wanted frames"):
        read_frames(counting_clip, np.array([3, 80]), 32)


def test_extract_writes_frames_labels_and_an_index(project, tiny_params):
    stages.validate_dataset(project, tiny_params)
    features = stages.extract_features(project, tiny_params)
    frames, labels = load_split(features.root, "train")
    p = tiny_params.extract
    assert frames.shape == (features.clips["train"], p.frames, p.size, p.size, 3)
    assert features.clips == {"train": 14, "test": 7}
    assert sorted(set(labels.tolist())) == list(range(7))
    index = json.loads((features.root / "index.json").read_text())
    assert index["labels"] == sorted(index["labels"]) and index["frames"] == p.frames


def test_extract_without_a_validated_catalog_is_an_error(tmp_path: Path):
    with pytest.raises(VidopsError, match="run the validate stage first"):
        extract_features(tmp_path, tmp_path / "accepted.csv", tmp_path / "features", ExtractParams())
    with pytest.raises(VidopsError, match="run the extract stage first"):
        load_split(tmp_path / "features", "train")

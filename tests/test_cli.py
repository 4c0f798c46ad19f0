"""The `vidops` command as a user runs it: exit codes, one-line errors, nothing half-written."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vidops.components.dependencies import NAMES as STAGE_NAMES

# what TensorFlow's C++ side writes: absl's lines (I1129 20:41:07.123 ... or I0000 00:00:1795984118.2 ...) and its
# notice
TENSORFLOW_LINE = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl)", re.MULTILINE)


def vidops(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The command as a user runs it: without the test session's TF_CPP_MIN_LOG_LEVEL (conftest.py sets it)."""
    # nor MLFLOW_TRACKING_URI, which mlflow.set_tracking_uri exports for the rest of the session, in any test before
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TF_CPP_MIN_LOG_LEVEL", "VIDOPS_VERBOSE", "MLFLOW_TRACKING_URI")
    }
    return subprocess.run(
        [sys.executable, "-m", "vidops", *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    """The error line, alone on stderr (TensorFlow's start-up lines too are off by default)."""
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[-1].startswith("vidops: error: ")
    assert sum(line.startswith("vidops: error") for line in lines) == 1
    return lines[-1]


def test_generate_writes_a_dataset_and_refuses_a_non_empty_folder(tmp_path: Path):
    made = vidops("generate", str(tmp_path / "clips"), "--clips-per-class", "1", "--seed", "3")
    assert made.returncode == 0, made.stderr
    assert "wrote 7 clips in 7 classes" in made.stdout
    again = vidops("generate", str(tmp_path / "clips"), "--clips-per-class", "1")
    assert "exists and is not an empty folder" in _one_line_error(again)
    assert len(list((tmp_path / "clips").rglob("*.mp4"))) == 7


def test_generate_writes_a_sync_dataset_with_its_own_defaults(tmp_path: Path):
    made = vidops("generate", str(tmp_path / "talk"), "--task", "sync", "--clips-per-class", "2")
    assert made.returncode == 0, made.stderr
    assert "wrote 2 clips in 1 classes" in made.stdout
    clip = next((tmp_path / "talk" / "talking").glob("*.mp4"))
    assert json.loads(vidops("inspect", str(clip)).stdout)["duration_s"] == pytest.approx(4.0, abs=0.1)


def test_generate_rejects_a_bad_count(tmp_path: Path):
    assert "clips_per_class" in _one_line_error(vidops("generate", str(tmp_path / "x"), "--clips-per-class", "0"))
    assert not (tmp_path / "x").exists()


def test_demo_in_an_unwritable_workdir_fails_cleanly(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert "the workdir is not writable" in _one_line_error(vidops("demo", "--workdir", str(blocker / "demo")))


def test_a_params_typo_stops_run_before_anything_starts(tmp_path: Path):
    (tmp_path / "params.yaml").write_text("train:\n  clasifier:\n    epochs: 2\n")
    line = _one_line_error(vidops("run", "--root", str(tmp_path)))
    assert "train.clasifier: unknown key" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_validate_prints_the_summary_and_exits_zero_on_a_usable_dataset(tmp_path: Path, tiny_dataset: Path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    (data / "rotate" / "garbage.mp4").write_text("not a video")
    result = vidops("validate", "data", "--report", "report", cwd=tmp_path)  # both relative to where the user is
    assert result.returncode == 0, result.stderr
    assert re.search(r"accepted\s+21\n\s+warned\s+0\n\s+quarantined\s+1\n\s+failed readable\s+1", result.stdout), (
        result.stdout
    )
    assert (tmp_path / "report" / "accepted.csv").is_file()
    assert (tmp_path / "report" / "data_docs" / "index.html").is_file()


def test_validate_fails_when_a_class_is_left_without_clips(tmp_path: Path, tiny_dataset: Path):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    for clip in (data / "zoom_in").iterdir():
        clip.write_text("not a video")
    assert "zoom_in has 0" in _one_line_error(vidops("validate", str(data), "--report", str(tmp_path / "r")))


def test_inspect_prints_the_probe_as_json(tiny_dataset: Path):
    clip = next(tiny_dataset.rglob("*.mp4"))
    result = vidops("inspect", str(clip))
    assert result.returncode == 0, result.stderr
    probe = json.loads(result.stdout)
    assert (probe["video_codec"], probe["frames"], probe["audio_codec"], probe["readable"]) == ("h264", 25, "aac", True)
    assert "no such file" in _one_line_error(vidops("inspect", "/nonexistent.mp4"))


def test_stage_runs_one_stage_of_one_task_on_the_project(project):
    result = vidops("stage", "validate", "--task", "sync", cwd=project.root)
    assert result.returncode == 0, result.stderr
    assert (project.catalog("sync") / "accepted.csv").is_file()
    assert not project.catalog("classification").exists()
    missing = vidops("stage", "train", "--task", "sync", cwd=project.root)
    assert "run the extract stage first" in _one_line_error(missing)


def test_a_task_without_its_dataset_is_named(project):
    shutil.rmtree(project.raw("demo-sync"))
    message = _one_line_error(vidops("stage", "validate", "--task", "sync", cwd=project.root))
    assert "demo-sync: no such dataset (datasets.sync in params.yaml)" in message


def test_each_stage_prints_one_line_and_tensorflow_stays_quiet_unless_verbose(project):
    lines = {
        "validate": (
            r"21 clips, 21 accepted \(0 with warnings\), 0 quarantined; "
            r"data/catalog/classification/quarantine\.csv"
        ),
        "extract": (
            r"21 clips of 7 classes \(14 train, 7 test\): 21 extracted, 0 reused, 0 failed; "
            r"data/features/classification"
        ),
        "train": r"2 epochs, final loss \d+\.\d{3}, accuracy \d\.\d{3}; models/classification/model\.keras",
        "evaluate": r"accuracy \d\.\d{3} on 7 test clips; reports/classification/metrics\.json",
    }
    for stage, line in lines.items():
        result = vidops("stage", stage, "--task", "classification", cwd=project.root)
        assert result.returncode == 0, result.stderr
        assert re.fullmatch(f"{stage} classification: {line}\n", result.stdout), result.stdout
        assert not TENSORFLOW_LINE.search(result.stderr), result.stderr
        if stage != "extract":  # extraction draws its own progress bar
            assert result.stderr == ""
    # --verbose lets the libraries talk (evaluation loads the model: TensorFlow)
    result = vidops("--verbose", "stage", "evaluate", "--task", "classification", cwd=project.root)
    assert result.returncode == 0 and TENSORFLOW_LINE.search(result.stderr), result.stderr
    assert re.fullmatch(f"evaluate classification: {lines['evaluate']}\n", result.stdout), result.stdout


def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    result = vidops("--version")
    assert (result.returncode, result.stdout) == (0, f"vidops {version('vidops')}\n")


def test_registration_and_decision_lines():
    from vidops.components.promotion import Decision
    from vidops.components.registry import Registration
    from vidops.components.stages import summary

    registered = Registration("vidops-sync", "3", "abc123", "1")
    assert summary(registered, Path("/p"), "accuracy_within_1") == "vidops-sync version 3, MLflow run abc123"
    decided = Decision(
        "vidops-sync",
        "3",
        False,
        "not promoted",
        "0.41 does not beat the champion's 0.52",
        "accuracy_within_1",
        0.41,
        "2",
        0.52,
    )
    assert (
        summary(decided, Path("/p"), "accuracy_within_1")
        == "vidops-sync version 3: not promoted: 0.41 does not beat the champion's 0.52"
    )


def test_stage_names_match_the_stages():
    from vidops.components.stages import STAGES

    assert tuple(STAGES) == STAGE_NAMES


def test_sample_saves_what_the_model_sees(tmp_path: Path, tiny_dataset: Path):
    clip = next(tiny_dataset.rglob("*.mp4"))
    result = vidops(
        "sample", str(clip), "--frames", "5", "--size", "40", "--out", str(tmp_path / "seen.npz"), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "seen.npz") as seen:
        assert seen["frames"].shape == (5, 40, 40, 3)
        assert seen["indices"].tolist() == [2, 7, 12, 17, 22]
        assert np.allclose(seen["times"], seen["indices"] / 25)
        assert seen["audio"].shape == (5, 4, 40) and bool(seen["has_audio"])
    (tmp_path / "params.yaml").write_text("extract:\n  classification:\n    size: 24\n")
    assert vidops("sample", str(clip), "--out", str(tmp_path / "default.npz"), cwd=tmp_path).returncode == 0
    with np.load(tmp_path / "default.npz") as seen:  # without flags, what the project's first task extracts
        assert seen["frames"].shape == (8, 24, 24, 3)
    (tmp_path / "broken.mp4").write_text("nope")
    assert "unreadable" in _one_line_error(
        vidops("sample", str(tmp_path / "broken.mp4"), "--out", str(tmp_path / "x.npz"))
    )


def test_bench_extract_prints_its_ratios(tmp_path: Path):
    result = vidops("bench", "extract", "--workdir", str(tmp_path), "--clips", "2", "--seconds", "1")
    assert result.returncode == 0, result.stderr
    for corpus in ("long-gop", "short-gop"):  # each corpus's ratios follow its heading
        block = result.stdout.split(f"{corpus}:")[1]
        for line in (
            "sparse / limit (c/l)",
            "sparse / limit with audio",
            "sparse / ffmpeg (c/a)",
            "dense / ffmpeg (d/a)",
            "sparse / naive (c/b)",
            "1 -> 2 workers speed-up",
        ):
            assert re.search(re.escape(line) + r"\s+\d+\.\d\d", block), result.stdout


def test_bench_train_prints_its_ratios(tmp_path: Path):
    result = vidops("bench", "train", "--workdir", str(tmp_path), "--clips", "4", "--batches", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    for task in ("classification", "sync"):
        # four feeds' examples per second (tensors, cached, streamed, on disk), then three ratios
        assert re.search(task + r"(\s+\d+\.\d){4}(\s+\d+\.\d\d){3}\n", result.stdout), result.stdout


@pytest.mark.slow
def test_bench_train_compares_a_frame_encoder_with_small(tmp_path: Path):
    result = vidops(
        "bench", "train", "--workdir", str(tmp_path), "--clips", "4", "--epochs", "1", "--encoder", "mobilenet_v3_small"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for encoder in ("small", "mobilenet_v3_small"):
        assert re.search(encoder + r"\s+\d\.\d{3}\s+1\s+\d+\.\d\s+\d+\.\d\d", result.stdout), result.stdout


def test_data_and_lineage_name_what_is_missing(tmp_path: Path):
    pull = vidops("data", "pull", "--root", str(tmp_path))
    assert pull.returncode == 1 and "not a DVC project; `vidops data push` makes it one" in pull.stderr
    remote = vidops("data", "remote", "--root", str(tmp_path))
    assert remote.returncode == 1 and "data remote needs the S3 URL" in remote.stderr
    bad = vidops("data", "remote", "https://example.com/bucket", "--root", str(tmp_path))
    assert bad.returncode == 1 and "not an S3 URL such as s3://my-bucket/datasets" in bad.stderr
    lineage = vidops("lineage", "models:/vidops-classifier@champion", "--root", str(tmp_path))
    assert lineage.returncode == 1 and "no MLflow store" in lineage.stderr

"""`vidops bench scale`'s parts, small: the near-duplicate search against the pairwise scan, the checks on a synthetic
manifest, the incremental re-run, which must work on the new clips only, and DVC's add, push and pull."""

from pathlib import Path

from vidops.benchmarks import scale
from vidops.components.layout import DECISION, Layout


def test_the_scale_bench_measures_each_part_and_a_rerun_works_on_the_new_clips_only(tmp_path: Path, monkeypatch):
    fast, slow, pairs = scale.near_duplicates(4000)  # raises unless both find the same pairs
    assert pairs > 20
    manifest = scale.synthetic_manifest(500)
    assert manifest["path"].is_unique and manifest["phash"].str.len().eq(48).all()
    timed = scale.checks((200, 800))
    assert set(timed) == {200, 800}

    stages, rerun = scale.stages(tmp_path, (6, 24))
    assert set(stages["validate"]) == set(stages["extract"]) == {6, 24}
    # one new clip (1% of 24, at least one) joins the 24: validation probes it alone, extraction extracts it alone
    assert (rerun["validate"].done, rerun["validate"].reused) == (1, 24)
    assert (rerun["extract"].done, rerun["extract"].reused) == (1, 24)
    dataset = tmp_path / "n24" / "data" / "raw" / "demo"
    assert len(list(dataset.glob("*/*.mp4"))) == 25 and len(list(dataset.iterdir())) == 2  # over two labels: 6 // 5 < 2

    # the models part on the larger project: the training input streamed within its budget, evaluate and the gate, on
    # the project's own MLflow store (not a server another test of this process pointed MLFLOW_TRACKING_URI at)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    models, runs = scale.models(tmp_path, (24,))
    assert set(models) == {"training input, an epoch", "evaluate", "gate"} and all(
        24 in timed for timed in models.values()
    )
    streamed, held = runs["none 24"], runs["memory 24"]
    assert (streamed.cache, runs["auto 24"].cache, held.cache) == (
        "none",
        "memory",
        "memory",
    )  # 24 clips fit the budget
    assert streamed.examples_per_s > 0 and 0 < streamed.peak_mb < streamed.budget_mb
    assert (Layout(tmp_path / "n24").promotion("classification") / DECISION).is_file()
    per_clip = {
        "validate": 0.031,
        "extract": 0.036,
    }  # UCF101-shaped clips' seconds (the bench's own part is not run here)
    printed = scale.report(
        scale.Scale((fast, slow, pairs), timed, stages | models, rerun, inputs=runs, ucf101=per_clip)
    )
    assert "growth exponent" in printed and "1 clips done, 24 reused" in printed, printed
    assert "the data path (validate + extract) after adding 1% new clips" in printed, printed
    assert "projected UCF101 (13,320 clips)" in printed, printed
    assert "training input, cache none at N=24" in printed and "under the 64 MB budget" in printed, printed


def test_the_dvc_part_adds_pushes_and_pulls_and_a_rerun_uploads_the_new_clips_only(tmp_path: Path):
    versions = scale.versions(
        tmp_path, (8,), jobs=()
    )  # one size, one SeaweedFS start: each DVC command costs a second or more
    assert set(versions.timed) == {"dvc add", "dvc push", "dvc pull"}
    # one new clip joins the 8: `dvc add` stores it alone, `dvc push` uploads it (and the new listing) alone
    assert (versions.rerun["dvc add"].done, versions.rerun["dvc add"].reused) == (1, 8)
    assert (versions.rerun["dvc push"].done, versions.rerun["dvc push"].reused) == (1, 8)
    printed = "\n".join(scale.report_versions(versions))
    assert "dvc push, per 1,000 clips" in printed and "1 clips done, 8 reused" in printed, printed


def test_the_ucf101_shaped_part_times_each_stage_and_a_rerun_works_on_the_new_clips_only(tmp_path: Path):
    per_clip, rerun, idle = scale.ucf101(tmp_path, clips=6)  # 6 real-sized clips, nothing new, then one more
    assert set(per_clip) == set(rerun) == set(idle) == {"validate", "extract", "dvc add", "dvc push"} and all(
        s > 0 for s in per_clip.values()
    )
    assert all((again.done, again.reused) == (1, 6) for again in rerun.values()), rerun
    assert all(seconds > 0 for seconds in idle.values()), idle
    clips = list((tmp_path / "ucf101").rglob("*.avi"))  # files of their own, as a user's: DVC leaves their inodes be
    assert len(clips) == 7 and all(clip.stat().st_nlink == 1 for clip in clips), clips
    others = ((0.5, 50.0, 10), {1_000: 0.3, 10_000: 2.9})  # the near-duplicate and check parts, not run here
    printed = scale.report(scale.Scale(*others, ucf101=per_clip, ucf101_rerun=rerun, ucf101_idle=idle, ucf101_clips=6))
    assert "UCF101-shaped dvc push after adding 1% new clips to 6" in printed, printed
    assert (
        "UCF101-shaped, the data path (validate + extract + dvc add + dvc push) after adding 1% new clips" in printed
    ), printed
    assert "UCF101-shaped, the data path again with nothing new" in printed, printed

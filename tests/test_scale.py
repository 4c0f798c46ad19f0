"""`vidops bench scale`'s parts, small: the near-duplicate search against the pairwise scan, the checks on a synthetic
manifest, and the incremental re-run, which must work on the new clips only."""

from pathlib import Path

from vidops.benchmarks import scale


def test_the_scale_bench_measures_each_part_and_a_rerun_works_on_the_new_clips_only(tmp_path: Path):
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
    printed = scale.report(scale.Scale((fast, slow, pairs), timed, stages, rerun))
    assert "growth exponent" in printed and "1 clips done, 24 reused" in printed, printed

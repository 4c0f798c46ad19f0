"""`vidops demo` as a user runs it in a clone of this repository, on a reduced demo (the full size is the README's
command and the benchmarks'): then `dvc status`, `dvc repro`, `dvc exp run` and a second demo, as its users would."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from vidops.components import versioning
from vidops.components.params import dump_params, load_params

pytestmark = pytest.mark.slow
REPO = Path(__file__).parents[1]
# the demo's datasets and models, smaller: what is tested here is the wiring, not the accuracy
REDUCED = [
    "generate.classification.clips_per_class=10",
    "generate.classification.duration_s=1.2",
    "generate.classification.size=64",
    "extract.classification.size=32",
    "train.classification.filters=[8, 16]",
    "train.classification.epochs=8",
    "generate.sync.clips_per_class=12",
    "generate.sync.duration_s=2.0",
    "extract.sync.frames=50",
    "train.sync.window=10",
    "train.sync.max_offset=8",
    "train.sync.windows_per_clip=16",
    "train.sync.epochs=3",
    "generate.captioning.clips_per_class=6",
    "generate.captioning.size=32",
    "generate.captioning.duration_s=0.8",
    "extract.captioning.frames=4",
    "extract.captioning.size=32",
    "train.captioning.filters=[8]",
    "train.captioning.units=16",
    "train.captioning.embedding=8",
    "train.captioning.epochs=2",
    "registry.classification.floor=0.0",
    "registry.sync.floor=0.0",
    "registry.captioning.floor=0.0",
]
MODELS = {
    "vidops-classifier": "demo",
    "vidops-sync": "demo-sync",
    "vidops-captioner": "demo-captions",
}  # each task's model and dataset


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


def _git(root: Path, *args: str) -> str:
    return _run(
        ["git", "-c", "user.name=vidops", "-c", "user.email=ci@vidops.invalid", *args], root, os.environ.copy()
    ).stdout


def test_the_demo_leaves_champions_and_a_dvc_project_in_step_with_the_flow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # a clone as the README's user has it: vidops's code, dvc.yaml and .gitignore, here with a reduced params.yaml
    root = tmp_path / "clone"
    shutil.copytree(REPO / "components", root / "components", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", ".dvcignore", ".dvc/config", ".dvc/.gitignore"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    (root / "params.yaml").write_text(dump_params(load_params(None, REDUCED)))
    _git(root, "init", "--quiet")
    _git(root, "add", "-A")
    _git(root, "commit", "--quiet", "-m", "a clone")
    for name in [k for k in os.environ if k.startswith(("MLFLOW_", "PREFECT_"))]:  # the embedded profile
        monkeypatch.delenv(name)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)  # conftest.py's; a user's shell has none
    monkeypatch.setenv(
        "PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )  # `vidops`, `dvc`: an activated venv
    env = os.environ.copy()
    demo = [sys.executable, "-m", "vidops", "demo"]

    first = _run(demo, root, env)
    assert first.stdout.count("now champion") == len(MODELS), first.stdout
    assert "Finished in state" not in first.stderr and "cuInit" not in first.stderr, (
        first.stderr
    )  # those are in the Prefect UI, or --verbose
    client = MlflowClient(f"sqlite:///{root / '.vidops' / 'mlflow.db'}")
    for name, dataset in MODELS.items():
        champion = client.get_model_version_by_alias(name, "champion")
        version = yaml.safe_load((root / "data" / "raw" / f"{dataset}.dvc").read_text())["outs"][0]["md5"]
        assert f"versioned data/raw/{dataset} as {version}" in first.stdout
        assert champion.tags["vidops.dataset_version"] == version
        run = client.get_run(champion.run_id)
        assert run.inputs.dataset_inputs[0].dataset.digest == version.removesuffix(".dir")  # MLflow's Dataset column

    # DVC knows what the flow did: nothing to reproduce, and a baseline staged for one commit
    assert "Data and pipelines are up to date" in versioning.dvc(root, "status").stdout
    assert "Data and pipelines are up to date" in versioning.dvc(root, "repro").stdout
    staged = set(_git(root, "diff", "--cached", "--name-only").split())
    assert {"dvc.lock", *(f"data/raw/{dataset}.dvc" for dataset in MODELS.values())} <= staged
    assert {f"reports/{task}/metrics.json" for task in ("classification", "sync", "captioning")} <= staged
    assert "git commit -m 'vidops demo: datasets, dvc.lock, metrics'" in first.stdout
    _git(root, "commit", "--quiet", "-m", "vidops demo: datasets, dvc.lock, metrics")
    versions = {name: len(client.search_model_versions(f"name='{name}'")) for name in MODELS}
    assert versions == dict.fromkeys(MODELS, 1)  # the no-op repro registered nothing

    # an experiment re-runs train and what follows it, for that task alone, and leaves the registry be
    # (register_experiments: false)
    params_before = (root / "params.yaml").read_text().splitlines()
    experiment = versioning.dvc(root, "exp", "run", "-S", "train.classification.epochs=2")
    assert experiment.returncode == 0, (experiment.stdout + experiment.stderr)[-4000:]
    ran = {line.split("'")[1] for line in experiment.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {f"{stage}@classification" for stage in ("train", "evaluate", "register", "promote")}, (
        experiment.stdout
    )
    assert {name: len(client.search_model_versions(f"name='{name}'")) for name in versions} == versions
    assert str(client.get_model_version_by_alias("vidops-classifier", "champion").version) == "1"
    changed = [
        line
        for line, was in zip((root / "params.yaml").read_text().splitlines(), params_before, strict=True)
        if line != was
    ]
    assert changed == ["    epochs: 2"]  # DVC's rewrite of params.yaml keeps its form
    assert "reports/classification/metrics.json" in versioning.dvc(root, "metrics", "diff").stdout

    # a second demo reuses the datasets and every cached stage, and leaves DVC in step
    _git(root, "checkout", "--quiet", "--", ".")  # the baseline back in the workspace: params, metrics, reports
    versioning.dvc(root, "checkout", "--force")  # and what DVC caches: features, models
    second = _run(demo, root, env)
    assert "using the demo classification dataset already in" in second.stdout
    assert "Data and pipelines are up to date" in versioning.dvc(root, "status").stdout
    assert len(second.stdout.splitlines()) <= 40, second.stdout  # one screen, besides the bars a terminal shows

"""The files a user runs by hand: dvc.yaml's stages, params.yaml, the README's two commands, and CI running the
second."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from vidops.components.dependencies import NAMES as STAGE_NAMES
from vidops.components.params import load_params

REPO = Path(__file__).resolve().parents[1]


def test_every_dvc_stage_runs_a_vidops_stage_per_task_and_reads_real_params():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert tuple(stages) == STAGE_NAMES
    known = load_params(None).to_yaml_dict()
    for name, stage in stages.items():
        assert stage["foreach"] == "${datasets}"  # one per task, named after the task: validate@sync
        for task, dataset in known["datasets"].items():
            do = yaml.safe_load(yaml.safe_dump(stage["do"]).replace("${key}", task).replace("${item}", dataset))
            assert do["cmd"] == f"vidops stage {name} --task {task}"
            for key in do.get("params", []):
                node = known
                for part in key.split("."):
                    assert part in node, f"dvc.yaml stage {name}: params key {key} is not in params.yaml"
                    node = node[part]
            for dep in do["deps"]:
                assert dep.startswith(("data/", "models/", "reports/")) or (REPO / dep).exists(), dep


def test_dvc_yaml_is_what_the_stage_table_derives_and_lists_every_module_a_stage_imports():
    """dvc.yaml comes from components.dependencies, as the Prefect cache key does: `vidops dvc-yaml --check` passes, and
    the train stage's code holds the modules training.py imports (cluster, io, layout), which a list by hand missed."""
    from vidops.components import dependencies, tasks

    checked = subprocess.run(
        [sys.executable, "-m", "vidops", "dvc-yaml", "--check", "--root", str(REPO)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    train = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]["do"]["deps"]
    assert {"components/training.py", "components/cluster.py", "components/io.py", "components/layout.py"} <= set(train)
    # a task's own files by name (the shipped tasks' folders are alike), and nothing training never imports
    assert {"components/tasks/${key}/train.py", "components/tasks/${key}/model.py"} <= set(train)
    assert "components/tasks/${key}/evaluation.py" not in train and "components/validation.py" not in train
    classification = {
        str(p.relative_to(REPO)) for p in dependencies.code(dependencies.stage("train"), [tasks.spec("classification")])
    }
    assert {"components/tasks/classification/train.py", "components/tasks/classification/model.py"} <= classification
    assert (
        "components/tasks/classification/evaluation.py" not in classification
    )  # changing the evaluation keeps the training


def test_a_changed_dvc_yaml_fails_the_check_and_names_the_command(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "components", repo / "components", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "vidops").mkdir()
    (repo / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text().replace("components/cluster.py\n", "", 1))
    checked = subprocess.run(
        [sys.executable, "-m", "vidops", "dvc-yaml", "--check", "--root", str(repo)], capture_output=True, text=True
    )
    assert checked.returncode == 1 and "not what `vidops dvc-yaml` writes" in checked.stderr


def test_readme_quickstart_has_two_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```(?:bash|sh)\n(.*?)\n```", quickstart, flags=re.S)
    assert len(commands) == 2 and all("\n" not in c for c in commands), commands
    demo, tests = commands
    assert demo.endswith("vidops demo") and "pytest" in tests
    assert tests in (REPO / ".ci" / "run").read_text()

"""The files a user runs by hand: dvc.yaml's stages, params.yaml, the README's two commands, and CI running the second."""

import re
from pathlib import Path

import yaml

from vidops.components.params import load_params
from vidops.cli import STAGE_NAMES

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


def test_dvc_and_the_prefect_cache_see_the_same_code_and_params_of_each_stage():
    from vidops.flows.stages import DEPENDS

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, depends in DEPENDS.items():
        code = {dep for dep in stages[name]["do"]["deps"] if dep.startswith("components/")}
        assert code == {f"components/{module.replace('{task}', '${key}')}.py" for module in depends.code}, name
        assert set(stages[name]["do"]["params"]) == {key.replace("{task}", "${key}") for key in depends.params}, name


def test_readme_quickstart_has_two_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```(?:bash|sh)\n(.*?)\n```", quickstart, flags=re.S)
    assert len(commands) == 2 and all("\n" not in c for c in commands), commands
    demo, tests = commands
    assert demo.endswith("vidops demo") and "pytest" in tests
    assert tests in (REPO / ".ci" / "run").read_text()

"""Setuptools' package list: every package folder of vidops's code, found under the folders that make up `vidops`, so a
new task folder (components/tasks/<task>/) needs no entry anywhere. The rest of the build is pyproject.toml's."""

from setuptools import find_packages, setup

# one import name, `vidops`, for all the code; the folders stay where the project's layout puts them
FOLDERS = {
    "vidops": "vidops",
    "vidops.components": "components",
    "vidops.flows": "flows",
    "vidops.stack": "infra/stack",
    "vidops.benchmarks": "benchmarks",
}

setup(
    package_dir=FOLDERS,
    packages=[*FOLDERS, *(f"{name}.{sub}" for name, folder in FOLDERS.items() for sub in find_packages(folder))],
)

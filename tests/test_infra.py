"""infra/ checked offline, as no image can be built here (no Docker daemon): the compose file against the Compose
specification's schema, the Kubernetes manifests against Kubernetes's schemas (strict: an unknown field fails), the
Dockerfiles with hadolint. Each checker is shown to fail on a broken copy, so a pass means something."""

import ast
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import yaml

from vidops.flows.deploy import CLIENT_ENV

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
COMPOSE = INFRA / "compose" / "compose.yaml"
KUBERNETES = INFRA / "kubernetes"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
BIN = Path(sys.executable).parent
MANIFESTS = sorted(p for p in KUBERNETES.rglob("*.yaml") if p.name not in ("kustomization.yaml", "prefect.yaml"))


def _check(*argv: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True)


def _compose(path: Path) -> subprocess.CompletedProcess:
    return _check(BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", path)


def _kubernetes(path: Path) -> subprocess.CompletedProcess:
    return _check(BIN / "kubernetes-validate", "--strict", "--quiet", path)


def _hadolint(path: Path) -> subprocess.CompletedProcess:
    return _check(BIN / "hadolint", path)


def test_the_compose_file_follows_the_compose_specification(tmp_path: Path):
    assert _compose(COMPOSE).returncode == 0, _compose(COMPOSE).stdout
    broken = tmp_path / "compose.yaml"
    broken.write_text(
        COMPOSE.read_text().replace(
            "    restart: unless-stopped\n", "    restart: unless-stopped\n    replicas: two\n", 1
        )
    )
    assert _compose(broken).returncode != 0


def test_the_compose_stack_publishes_only_on_loopback_and_takes_every_secret_from_the_env_file():
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert {
        "postgres",
        "prefect-server",
        "mlflow",
        "seaweedfs",
        "worker",
        "worker-gpu",
        "dask-scheduler",
        "dask-worker",
    } <= set(services)
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond the host's loopback"
    assert "ports" not in services["postgres"] and "ports" not in services["dask-scheduler"]  # no credentials there
    # every secret is one the example file lists, and a missing one stops compose with a message naming the file
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?set \1 in infra/compose/\.env", COMPOSE.read_text()))
    example = INFRA / "compose" / ".env.example"
    listed = {line.split("=", 1)[0] for line in example.read_text().splitlines() if line and not line.startswith("#")}
    assert required == {
        "POSTGRES_PASSWORD",
        "PREFECT_AUTH_STRING",
        "MLFLOW_ADMIN_PASSWORD",
        "MLFLOW_FLASK_SECRET_KEY",
        "S3_ACCESS_KEY",
        "S3_SECRET_KEY",
    }
    assert required <= listed
    assert _check("git", "-C", ROOT, "check-ignore", "-q", "infra/compose/.env").returncode == 0, (
        "infra/compose/.env must not be committed"
    )
    assert services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_the_kubernetes_manifests_validate_against_kubernetes_s_schemas(tmp_path: Path):
    assert MANIFESTS
    for path in MANIFESTS:
        result = _kubernetes(path)
        assert result.returncode == 0, f"{path}: {result.stdout}{result.stderr}"
    broken = tmp_path / "broken.yaml"
    broken.write_text((KUBERNETES / "base" / "dask.yaml").read_text().replace("replicas: 4", "replicas: four"))
    assert _kubernetes(broken).returncode != 0
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(
        (KUBERNETES / "base" / "dask.yaml").read_text().replace("  replicas: 4", "  replicas: 4\n  gpus: 1")
    )
    assert _kubernetes(unknown).returncode != 0


def test_the_kustomization_lists_every_base_manifest_and_secrets_are_only_referenced():
    base = KUBERNETES / "base"
    listed = yaml.safe_load((base / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in base.glob("*.yaml") if p.name != "kustomization.yaml")
    documents = [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]
    assert not [d for d in documents if d["kind"] == "Secret"], "a Secret's values do not belong in git"
    text = "\n".join(path.read_text() for path in MANIFESTS)
    referenced = set(re.findall(r"(?:secretKeyRef|secretRef): \{name: ([a-z-]+)", text))
    config, client = CLIENT_ENV
    assert referenced == {client, "vidops-server"}
    assert config in {d["metadata"]["name"] for d in documents if d["kind"] == "ConfigMap"}  # the pool's Jobs read it


def test_the_dockerfile_lints_clean_and_installs_as_the_readme_does(tmp_path: Path):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    result = _hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout
    text = DOCKERFILE.read_text()
    assert (
        'python3.11 -m venv /opt/vidops && /opt/vidops/bin/pip install --no-cache-dir -c constraints.txt ".${EXTRAS}"'
        in text
    )
    copied = set(re.findall(r"^COPY ([\w/]+)/ \1/$", text, re.MULTILINE))
    folders = set(_package_folders().values())
    assert copied == folders, f"the image copies {sorted(copied)}, the package is {sorted(folders)}"
    assert re.search(r"^COPY pyproject.toml setup.py ", text, re.MULTILINE), (
        "the image builds without setup.py's package list"
    )
    assert re.search(r"^USER 10001$", text, re.MULTILINE), "the image runs as root"
    # the GPU workers' image is the same file with the gpu extra
    gpu = yaml.safe_load(COMPOSE.read_text())["services"]["worker-gpu"]["build"]
    assert (
        gpu["args"] == {"EXTRAS": "[gpu]"}
        and "tensorflow[and-cuda]==2.21.0" in pyproject["project"]["optional-dependencies"]["gpu"]
    )
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        DOCKERFILE.read_text().replace("FROM python:3.11.7-slim-bookworm AS build", "FROM python:latest AS build")
    )
    assert _hadolint(broken).returncode != 0


def _package_folders() -> dict[str, str]:
    """setup.py's FOLDERS: each package of `vidops` and the folder it is."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    found = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "FOLDERS")
    return ast.literal_eval(found.value)


def test_the_built_distribution_holds_every_task_folder_without_a_list_of_them(tmp_path: Path):
    """A wheel, as the image installs one: every package folder under vidops's folders is in it (a new task folder
    needs no entry in any list), and the stack's package."""
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("vidops-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for task in (p.name for p in (ROOT / "components" / "tasks").iterdir() if (p / "__init__.py").is_file()):
        assert f"vidops/components/tasks/{task}/spec.py" in names, task
    assert {"vidops/stack/services.py", "vidops/commands/pipeline.py", "vidops/flows/pipeline.py"} <= names

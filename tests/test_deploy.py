"""The deployments' specs and work pools, against a real Prefect API: the cluster's GPU pool renders Jobs that ask for
GPUs."""

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun

from vidops.components.errors import VidopsError
from vidops.components.layout import Layout
from vidops.flows.deploy import REPO_SPEC, _ensure_pools, deploy, deployments

CLUSTER = REPO_SPEC.parent / "infra" / "kubernetes" / "prefect.yaml"


def test_the_cluster_deployments_run_on_a_kubernetes_pool_whose_jobs_ask_for_gpus(prefect_api, tmp_path: Path):
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    found = deployments(CLUSTER)
    assert [d["name"] for d in found] == ["nightly-gpu", "on-demand-gpu"]
    assert {d["work_pool"]["name"] for d in found} == {"vidops-kubernetes-gpu"}
    _ensure_pools(found + deployments(REPO_SPEC))
    with get_client(sync_client=True) as client:
        gpu, local = client.read_work_pool("vidops-kubernetes-gpu"), client.read_work_pool("vidops-process")
    assert (gpu.type, local.type) == ("kubernetes", "process")

    # the Job a flow run of nightly-gpu becomes: the pool's template rendered with the deployment's job variables
    variables = {**found[0]["work_pool"]["job_variables"], "image": "registry.example.com/vidops:0.1.0"}
    configuration = asyncio.run(
        KubernetesWorkerJobConfiguration.from_template_and_values(gpu.base_job_template, variables)
    )
    configuration.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="nightly"))
    job = configuration.job_manifest
    manifest = tmp_path / "job.yaml"
    # the API server turns generateName into a name; kubernetes-validate wants one
    manifest.write_text(
        yaml.safe_dump({**job, "metadata": {**job["metadata"], "name": job["metadata"]["generateName"] + "x1"}})
    )
    checked = subprocess.run(
        [Path(sys.executable).parent / "kubernetes-validate", "--strict", manifest], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr  # what the worker would submit is a valid Job
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["envFrom"] == [
        {"configMapRef": {"name": "vidops-config"}},
        {"secretRef": {"name": "vidops-client"}},
    ]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["containers"][0]["image"] == "registry.example.com/vidops:0.1.0"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_deploy_applies_prefect_yaml_s_deployments_with_the_project_folder_as_pull_step(
    prefect_api, tmp_path: Path, monkeypatch
):
    """What `vidops deploy` leaves on the server, as a user checks it; a second deploy (another folder) updates them."""
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setenv(
        "PREFECT_API_URL", PREFECT_API_URL.value()
    )  # the harness sets Prefect's setting; deploy reads the variable
    monkeypatch.delenv("VIDOPS_ROOT", raising=False)
    expected = {
        "training_pipeline/nightly": ("vidops.flows.pipeline.training_pipeline", ["0 2 * * *"]),
        "promotion/on-demand": ("vidops.flows.pipeline.promotion", []),
        "ingest/every-15-minutes": ("vidops.flows.ingest.ingest", ["*/15 * * * *"]),
    }
    described = {d["name"]: d["description"] for d in yaml.safe_load(REPO_SPEC.read_text())["deployments"]}
    for root in (tmp_path / "first", tmp_path / "second"):
        root.mkdir()
        assert deploy(Layout(root)) == list(expected)
        with get_client(sync_client=True) as client:
            for name, (entrypoint, crons) in expected.items():
                found = client.read_deployment_by_name(name)
                assert found.entrypoint == entrypoint and found.work_pool_name == "vidops-process"
                assert [(s.schedule.cron, s.schedule.timezone) for s in found.schedules] == [
                    (cron, "UTC") for cron in crons
                ]
                assert found.parameters == {"root": ".", "params_file": "params.yaml"}
                assert set(found.parameter_openapi_schema["properties"]) >= {"root", "params_file", "overrides"}
                assert found.pull_steps == [
                    {"prefect.deployments.steps.set_working_directory": {"directory": str(root)}}
                ]
                assert found.description == described[name.split("/")[1]] and found.tags == []
    assert "VIDOPS_ROOT" not in os.environ  # set for the templating only


def test_a_schedule_that_is_not_cron_is_named(tmp_path: Path):
    spec = tmp_path / "prefect.yaml"
    spec.write_text(CLUSTER.read_text().replace('"0 2 * * *"', '"nightly"'))
    with pytest.raises(VidopsError, match="deployment nightly-gpu: schedule 'nightly' is not a cron string"):
        deployments(spec)


def test_every_deployment_s_entrypoint_is_a_flow_of_the_installed_package():
    """Entrypoints name modules of the installed `vidops` (a project needs no code); a stale one fails only on a
    worker."""
    from prefect import Flow
    from prefect.flows import load_flow_from_entrypoint

    for spec in (REPO_SPEC, CLUSTER):
        for found in deployments(spec):
            assert found["entrypoint"].startswith("vidops.flows."), found["entrypoint"]
            assert isinstance(load_flow_from_entrypoint(found["entrypoint"]), Flow), found["entrypoint"]

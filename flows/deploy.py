"""`vidops deploy` and `vidops serve`: the deployments of prefect.yaml, applied to a Prefect server or served
in-process.

prefect.yaml is the one description of the deployments (names, entrypoints, cron schedules,
work pools, pull steps). `deploy` checks it and the server first, so a typo or a server that
is down is one clear line, then applies each deployment through Prefect's Python API as
`prefect deploy --all` does: `{{ $VAR }}` templates resolved from the environment, with
VIDOPS_ROOT the project folder, and the file's pull steps stored with each deployment.
`serve` runs the same deployments with their schedules in this process, without a worker.
"""

from __future__ import annotations

import contextlib
import os
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from vidops.components.errors import VidopsError
from vidops.components.layout import Layout

SPEC = "prefect.yaml"
REPO_SPEC = Path(__file__).resolve().parent.parent / SPEC  # the checkout's, for projects without their own


def spec_path(layout: Layout, spec: Path | None = None) -> Path:
    """`spec` when given, else the project's prefect.yaml, else vidops's own."""
    if spec is not None:
        if not spec.is_file():
            raise VidopsError(f"{spec}: no such prefect.yaml")
        return spec.resolve()  # `deploy` works in the project folder
    own = layout.root / SPEC
    return own if own.is_file() else REPO_SPEC


def deployments(path: Path) -> list[dict[str, Any]]:
    """The deployments of a prefect.yaml, each schedule checked: an error names the deployment and the string."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        found = yaml.safe_load(path.read_text())["deployments"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise VidopsError(f"{path}: not a prefect.yaml with deployments: {exc}") from None
    for deployment in found:
        for schedule in deployment.get("schedules") or []:
            try:
                CronSchedule(cron=schedule.get("cron", ""), timezone=schedule.get("timezone"))
            except ValidationError:
                raise VidopsError(
                    f"{path}: deployment {deployment['name']}: schedule {schedule.get('cron')!r} "
                    "is not a cron string such as '0 2 * * *'"
                ) from None
    return found


def deploy(layout: Layout, spec: Path | None = None) -> list[str]:
    """Apply prefect.yaml's deployments (or `spec`'s) for the project at `layout.root`; their names (flow/deployment).

    Each is the RunnerDeployment Prefect 3.9.1's `prefect deploy` builds (prefect/cli/deploy/_core.py), applied the
    same way, in the project folder (where Prefect infers the version from git) with VIDOPS_ROOT set to it."""
    from unittest import mock

    import httpx
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.cli.deploy._storage import _PullStepStorage
    from prefect.deployments.runner import DeploymentApplyError, RunnerDeployment
    from prefect.exceptions import PrefectException
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.filesystem import tmpchdir
    from prefect.utilities.templating import apply_values

    path = spec_path(layout, spec)
    found = deployments(path)
    api = _server()
    _ensure_pools(found)
    top_pull = yaml.safe_load(path.read_text()).get("pull")
    names = []
    # VIDOPS_ROOT for the pull step (flow runs work in the project folder): Prefect's templating reads os.environ
    with mock.patch.dict(os.environ, VIDOPS_ROOT=str(layout.root)), tmpchdir(str(layout.root)):
        for d in found:
            # {{ $VAR }} from the environment; step outputs kept
            pull = apply_values(d.get("pull", top_pull) or [], {}, remove_notset=False)
            # as prefect deploy's two passes
            config = apply_values(apply_values(d, os.environ, remove_notset=False), {}, skip_prefixes=["ctx."])
            pool = config.get("work_pool") or {}
            try:
                flow = load_flow_from_entrypoint(config["entrypoint"])
                deployment = RunnerDeployment(
                    name=config["name"],
                    flow_name=flow.name,
                    entrypoint=config["entrypoint"],
                    description=config.get("description"),
                    parameters=config.get("parameters") or {},
                    tags=config.get("tags") or [],
                    version=config.get("version"),
                    version_type=config.get("version_type"),
                    storage=_PullStepStorage(pull),
                    work_pool_name=pool.get("name"),
                    work_queue_name=pool.get("work_queue_name"),
                    job_variables=pool.get("job_variables") or {},
                )
                deployment._set_defaults_from_flow(flow)  # the flow's parameter schema, version and description
                schedules = config.get("schedules")
                deployment.apply(
                    schedules=None
                    if schedules is None
                    else [_schedule_config_to_deployment_schedule(s) for s in schedules]
                )
            # ValueError: a field pydantic rejects
            except (ValueError, ImportError, PrefectException, DeploymentApplyError, httpx.HTTPError) as exc:
                reason = " ".join(str(exc).split())[:500]
                raise VidopsError(
                    f"deploying {d['name']} ({path}) to the Prefect server at {api} failed: {reason}"
                ) from None
            names.append(deployment.full_name)
    return names


def serve(layout: Layout) -> None:
    """Run prefect.yaml's deployments with their schedules in this process, until interrupted."""
    from prefect import serve as serve_all
    from prefect.flows import load_flow_from_entrypoint

    os.chdir(layout.root)  # what the pull step does for a worker's runs
    runners = []
    for d in deployments(spec_path(layout)):
        flow = load_flow_from_entrypoint(d["entrypoint"])
        crons = [s["cron"] for s in d.get("schedules") or []]
        runners.append(
            flow.to_deployment(
                name=d["name"],
                cron=crons or None,
                parameters=d.get("parameters") or {},
                description=d.get("description"),
            )
        )
    serve_all(*runners)


def _server() -> str:
    """The Prefect API URL, once it answers."""
    api = os.environ.get("PREFECT_API_URL")
    if not api:
        raise VidopsError("no Prefect server to deploy to: `vidops stack up` first, or set PREFECT_API_URL")
    try:
        with urllib.request.urlopen(f"{api.rstrip('/')}/health", timeout=10):
            return api
    except OSError as exc:
        raise VidopsError(
            f"the Prefect server at {api} does not answer ({getattr(exc, 'reason', exc)}); "
            "`vidops stack status` shows the stack's"
        ) from None


# a pool named elsewhere is made a process pool
POOLS = {"vidops-process": "process", "vidops-kubernetes-gpu": "kubernetes"}
GPU_RESOURCE = "nvidia.com/gpu"  # what NVIDIA's device plugin makes schedulable
CLIENT_ENV = ("vidops-config", "vidops-client")  # infra/kubernetes/base's ConfigMap and Secret of a client's variables


def _ensure_pools(found: list[dict[str, Any]]) -> None:
    """Make each named work pool that is missing: `vidops-kubernetes-gpu` as a Kubernetes pool whose Jobs ask for GPUs
    (`gpu_job_template`), any other as a process pool."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        for name in {d["work_pool"]["name"] for d in found if d.get("work_pool")}:
            try:
                client.read_work_pool(name)
            except ObjectNotFound:
                kind = POOLS.get(name, "process")
                template = gpu_job_template() if kind == "kubernetes" else {}
                with contextlib.suppress(ObjectAlreadyExists):
                    client.create_work_pool(WorkPoolCreate(name=name, type=kind, base_job_template=template))


def gpu_job_template() -> dict[str, Any]:
    """prefect-kubernetes's Job template, its container limited to `gpus` GPUs (a job variable, 1 by default) and its
    pod tolerating the taint GPU nodes usually carry, so each flow run is a Job on a GPU node; the container reads the
    services' addresses and the client's credentials from the cluster profile's ConfigMap and Secret (CLIENT_ENV)."""
    from prefect_kubernetes.worker import KubernetesWorker

    template = KubernetesWorker.get_default_base_job_template()
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    pod["containers"][0]["resources"]["limits"][GPU_RESOURCE] = "{{ gpus }}"
    job = template["job_configuration"]["job_manifest"]["spec"]
    # prefect-kubernetes puts these Job fields in the pod, where Kubernetes drops them
    for key in ("completions", "parallelism"):
        job[key] = pod.pop(key)
    config, secret = CLIENT_ENV
    pod["containers"][0]["envFrom"] = [{"configMapRef": {"name": config}}, {"secretRef": {"name": secret}}]
    pod["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    template["variables"]["properties"]["gpus"] = {
        "title": "GPUs",
        "type": "integer",
        "default": 1,
        "minimum": 0,
        "description": f"{GPU_RESOURCE} the flow run's container is limited to",
    }
    return template

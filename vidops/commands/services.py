"""`vidops stack`, `deploy` and `serve`: the stack profile on this machine, and prefect.yaml's deployments."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from vidops.commands.shared import ensure_writable
from vidops.components.layout import Layout


def add(
    commands: Any, project: argparse.ArgumentParser, params: argparse.ArgumentParser, overrides: argparse.ArgumentParser
) -> None:
    stack = commands.add_parser(
        "stack",
        parents=[project],
        help="the stack profile on this machine: S3 (SeaweedFS), MLflow and Prefect servers with their UIs, a worker",
    )
    stack.add_argument("action", choices=["up", "down", "status"])
    for name, port in (("prefect", 4200), ("mlflow", 5000), ("s3", 8333)):
        stack.add_argument(
            f"--{name}-port", type=int, default=port, help=f"up: the {name} port on 127.0.0.1 (default: {port})"
        )
    stack.add_argument(
        "--database",
        metavar="URL",
        help="up: keep Prefect's and MLflow's state in PostgreSQL, postgresql://USER@HOST:PORT/PREFIX (databases "
        "PREFIX_prefect, PREFIX_mlflow, PREFIX_mlflow_auth, made when missing; the password from PGPASSWORD); "
        "default: SQLite under .vidops/",
    )
    stack.add_argument(
        "--workers", type=int, default=1, help="up: Prefect process workers polling the pool (default: 1)"
    )
    stack.set_defaults(handler=run_stack)

    deploy = commands.add_parser(
        "deploy",
        parents=[project],
        help="apply prefect.yaml's deployments (nightly training, ingest, on-demand promotion) to the Prefect server",
    )
    deploy.add_argument(
        "--spec", type=Path, help="another prefect.yaml, e.g. infra/kubernetes/prefect.yaml (the cluster's GPU pool)"
    )
    deploy.set_defaults(handler=deploy_flows)

    serve = commands.add_parser(
        "serve",
        parents=[project],
        help="run prefect.yaml's deployments with their schedules in this process, without a worker",
    )
    serve.set_defaults(handler=serve_flows, models=True)


def run_stack(args: argparse.Namespace) -> None:
    from vidops.components import tracking
    from vidops.stack import services as stack
    from vidops.stack.folders import folder
    from vidops.stack.postgres import Database

    layout = Layout(args.root.resolve())
    if args.action == "up":
        ensure_writable(layout.state)
        database = Database.parse(args.database) if args.database else None
        for name, url in stack.up(
            layout, stack.Ports(args.prefect_port, args.mlflow_port, args.s3_port), database, args.workers
        ).items():
            print(f"{name:8} {url}")
        env_file = folder(layout) / stack.ENV_FILE
        registry = tracking.embedded(layout).uri.removeprefix("sqlite:///")
        print(
            f"vidops commands with --root {layout.root} now use the stack; "
            f"for other tools: set -a; . {env_file}; set +a"
        )
        print(
            f"the UIs ask for credentials, kept in {env_file} (mode 600): "
            "Prefect's login takes PREFECT_API_AUTH_STRING, "
            "MLflow's MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
        if database:
            print(
                f"Prefect and MLflow keep their state in PostgreSQL, {database.uri('*')}; "
                f"with the stack down, vidops commands use the embedded store, {registry}"
            )
            return
        print(f"MLflow serves the project's one registry, {registry}")
        if (former := folder(layout) / "mlflow.db").is_file():
            print(
                f"a registry kept by an older vidops stays in {former}: "
                f"mlflow ui --backend-store-uri sqlite:///{former}"
            )
    elif args.action == "down":
        stopped = stack.down(layout)
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    else:
        services = stack.status(layout)
        if not services:
            print("the stack is down")
        for name, (url, alive) in services.items():
            print(f"{name:8} {'up' if alive else 'DOWN':5} {url}")
        if services and (database := stack.store(layout)):
            print(f"Prefect and MLflow keep their state in {database}")


def deploy_flows(args: argparse.Namespace) -> None:
    from vidops.flows.deploy import deploy, deployments, spec_path

    layout = Layout(args.root.resolve())
    names = deploy(layout, args.spec)
    for name, spec in zip(names, deployments(spec_path(layout, args.spec)), strict=True):
        crons = ", ".join(f"{s['cron']} {s.get('timezone', 'UTC')}" for s in spec.get("schedules") or []) or "on demand"
        print(f"{name:32} {crons}")
    print(f"Prefect UI: {os.environ['PREFECT_API_URL'].removesuffix('/api')}/deployments")


def serve_flows(args: argparse.Namespace) -> None:
    from vidops.stack.profiles import activate

    layout = Layout(args.root.resolve())
    activate(layout)
    from vidops.flows.deploy import serve

    serve(layout)

"""`vidops promote`, `rollback` and `predict`: a person's decisions in the registry, and what a model says of videos."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vidops.commands.shared import registry
from vidops.components.errors import VidopsError
from vidops.components.layout import Layout

if TYPE_CHECKING:  # importing it loads MLflow's client
    from vidops.components.tracking import Tracking


def add(
    commands: Any, project: argparse.ArgumentParser, params: argparse.ArgumentParser, overrides: argparse.ArgumentParser
) -> None:
    promote = commands.add_parser(
        "promote", parents=[project], help="make a registered version champion, by a person's decision"
    )
    promote.add_argument("model", help="registered model name, e.g. vidops-classifier")
    promote.add_argument("--version", help="default: the challenger")
    promote.add_argument("--reason", required=True, help="why; recorded on the version")
    promote.set_defaults(handler=promote_version)

    rollback = commands.add_parser("rollback", parents=[project], help="move champion back to previous-champion")
    rollback.add_argument("model", help="registered model name, e.g. vidops-classifier")
    rollback.add_argument("--reason", default="rolled back by hand", help="why; recorded on both versions")
    rollback.set_defaults(handler=roll_back)

    predict = commands.add_parser(
        "predict",
        parents=[project],
        help="what a registered model says of videos, e.g. models:/vidops-classifier@champion",
    )
    predict.add_argument("model_uri")
    predict.add_argument("videos", type=Path, nargs="+")
    predict.set_defaults(handler=predict_videos, models=True)


def promote_version(args: argparse.Namespace) -> None:
    from vidops.components.promotion import promote

    with _locked_registry(args.root, args.model) as found:
        version = promote(found, args.model, args.version, args.reason)
    print(f"{args.model} version {version} is now champion")


def roll_back(args: argparse.Namespace) -> None:
    from vidops.components.promotion import rollback

    with _locked_registry(args.root, args.model) as found:
        version = rollback(found, args.model, args.reason)
    print(f"{args.model} version {version} is champion again")


@contextmanager
def _locked_registry(root: Path, model: str) -> Iterator[Tracking]:
    """The project's MLflow, with `model`'s lock held (the gate takes the same one)."""
    from vidops.stack.profiles import registry_lock

    found = registry(root)
    with registry_lock(Layout(root.resolve()), model):
        yield found


def predict_videos(args: argparse.Namespace) -> None:
    from vidops.components.quiet import quiet_libraries

    quiet_libraries()
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from tqdm import tqdm

    for video in args.videos:
        if not video.is_file():
            raise VidopsError(f"{video}: no such file")
    os.environ["VIDOPS_SERVE_PATHS"] = "1"  # components.serving.SERVE_PATHS: this process reads the user's own files
    with tempfile.TemporaryDirectory() as tmp:
        source = (
            args.model_uri
        )  # a folder or runs:/ URI is the user's to trust; a registered version must carry vidops's seal
        if args.model_uri.startswith(("models:/", "runs:/")):
            mlflow.set_tracking_uri(registry(args.root).uri)
        if args.model_uri.startswith("models:/"):
            from vidops.components.lineage import registered_version
            from vidops.components.seal import registry_key, trusted_download

            found = registry(args.root)
            name, version = registered_version(found, args.model_uri)
            source = str(
                trusted_download(
                    found, name, str(version.version), registry_key(Layout(args.root.resolve())), Path(tmp)
                )
            )
        try:
            model = mlflow.pyfunc.load_model(source)
        except MlflowException as exc:
            raise VidopsError(f"{args.model_uri}: cannot load the model: {exc.message.splitlines()[0]}") from None
    for video in tqdm(args.videos, unit="video", file=sys.stderr, disable=len(args.videos) < 2):
        try:
            answer = model.predict(pd.DataFrame({"video": [str(video.resolve())]})).iloc[0]
        except MlflowException as exc:
            raise VidopsError(f"{video}: {exc.message}") from None
        shown = {k: v for k, v in answer.items() if not k.startswith("p_")}
        print(f"{video}\t" + "\t".join(f"{k}={_shown(v)}" for k, v in shown.items()))


def _shown(value: Any) -> str:
    """A served answer's value as `vidops predict` prints it: floats to 4 places, lists and dicts as JSON."""
    if isinstance(value, float):
        return f"{value:.4f}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)

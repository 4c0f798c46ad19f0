"""The served model: an MLflow pyfunc that takes videos, not tensors.

It wraps a trained Keras model with the extraction and train params it was trained with, so
`mlflow models serve -m models:/<name>@champion` takes a video file's bytes in base64 and
answers as the task's spec says (`predict`): the class and its probabilities, or the audio
offset in frames with its confidence. A path is taken only by a process started with
VIDOPS_SERVE_PATHS=1 (`vidops predict` is one): a server that opened any path a client posts
would tell strangers which of its files exist and decode. MLflow logs it from code (`MODEL_CODE`), never as a pickle.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from vidops.components.errors import VidopsError

VIDEO = "video"  # the input column: the file's bytes in base64, or a path where SERVE_PATHS allows it
SERVE_PATHS = "VIDOPS_SERVE_PATHS"  # "1" in the serving process's environment: paths on its machine are taken too
MODEL_CODE = Path(__file__).with_name("served_model.py")  # what MLflow logs as the model: code, so nothing is pickled


class VideoModel(mlflow.pyfunc.PythonModel):
    """Video in, prediction out; a bad video is a 400 that names what is wrong with it."""

    def load_context(self, context: Any) -> None:
        from vidops.components.layers import load_model
        from vidops.components.params import ExtractParams
        from vidops.components.tasks import served

        self.config = json.loads(Path(context.artifacts["config"]).read_text())
        self.task = served(self.config["task"], self.config.get("package", ""))
        self.model = load_model(Path(context.artifacts["model"]), self.task.package)
        self.extract = ExtractParams.model_validate(self.config["extract"])
        self.train = self.task.train_params.model_validate(self.config["train"], strict=False)  # JSON lists for tuples

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if VIDEO not in model_input or model_input.empty:
            raise _bad_request(f"no video: send a column {VIDEO!r} holding paths or base64 file bytes")
        return pd.DataFrame([self._one(str(value)) for value in model_input[VIDEO]])

    def _one(self, value: str) -> dict[str, Any]:
        with _as_file(value) as path:
            features = self._features(path)
        try:
            return self.task.predict(self.model, features, self.config["labels"], self.train)
        except VidopsError as exc:
            raise _bad_request(str(exc)) from None

    def _features(self, path: Path) -> Any:
        from vidops.components.extraction import extract_clip
        from vidops.components.probe import probe_clip
        from vidops.components.sampling import ClipTooShort

        probe = probe_clip(path)
        if not probe["readable"]:
            raise _bad_request(f"not a readable video: {probe['error']}")
        try:
            return extract_clip(path, int(probe["frames"]), self.extract)
        except (ClipTooShort, ValueError, OSError) as exc:
            raise _bad_request(f"cannot extract frames: {exc}") from None


def _bad_request(message: str) -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


@contextmanager
def _as_file(value: str) -> Iterator[Path]:
    """A path for `value`: a temporary file holding its base64-decoded bytes, or, where SERVE_PATHS allows, the file it
    names."""
    paths = os.environ.get(SERVE_PATHS) == "1"
    if paths and _is_file(value):
        yield Path(value)
        return
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        # the same answer whether or not such a file exists: the server says nothing of its own files
        taken = "an existing file or base64 bytes" if paths else f"base64 file bytes (paths only where {SERVE_PATHS}=1)"
        raise _bad_request(f"{value[:80]!r}: not {taken}") from None
    with tempfile.NamedTemporaryFile(suffix=".video") as tmp:
        tmp.write(data)
        tmp.flush()
        yield Path(tmp.name)


def _is_file(value: str) -> bool:
    try:
        return Path(value).is_file()
    except (OSError, ValueError):  # base64 text is often too long, or holds a NUL, for a path
        return False


def encode(path: Path) -> str:
    """A video file as the base64 text a served model takes."""
    return base64.b64encode(path.read_bytes()).decode()

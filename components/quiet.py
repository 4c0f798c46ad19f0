"""Library chatter off: no telemetry, and unless VIDOPS_VERBOSE is set, only the warnings and errors a user acts on.

Called by the `vidops` command before any library loads, and by every process vidops spawns (a training's), so that
TensorFlow, MLflow and Great Expectations load as quietly there as here.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import warnings
from typing import Any

VERBOSE = "VIDOPS_VERBOSE"  # set (to 1) by `vidops --verbose`: library chatter stays on, here and in child processes


def quiet_libraries() -> None:
    """No telemetry; and unless VIDOPS_VERBOSE is set, no library chatter: TensorFlow's C++ lines and Python log lines
    below ERROR, MLflow's likewise and its artifact progress bars when stderr is not a terminal, warnings that libraries
    print. Processes started after this inherit it (the environment; a spawned process calls this itself)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    if os.environ.get(VERBOSE):
        return
    # read by TensorFlow as it loads; ERROR is filtered too, for cuInit's "error" on every machine without a GPU
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    if not sys.stderr.isatty():  # a bar redrawn in a log file is one line per redraw
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # for child processes; this one's filters are set here
    warnings.simplefilter("ignore")
    logging.getLogger("tensorflow").setLevel(
        logging.ERROR
    )  # Prefect's console shows its warnings (tf.function retracing)
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` for the first import of it, wherever that is, and loads it with stderr sent to /dev/null.

    TensorFlow's native libraries log as they load (oneDNN, the CUDA stubs) through absl before any log
    level is read, so TF_CPP_MIN_LOG_LEVEL cannot stop those lines; only their file descriptor can.
    """

    found = (
        False  # once: this finder stays in sys.meta_path (removing it could skip a finder in another thread's import)
    )

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow" or self.found:
            return None
        self.found = True  # and the real finders find it
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _SilentLoader(spec.loader)
        return spec


class _SilentLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # the real one, for whoever asks later
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 2)
            self.loader.exec_module(module)
        finally:
            os.dup2(saved, 2)
            os.close(saved)

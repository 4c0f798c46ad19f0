"""Where this process stands in a multi-worker training, from TF_CONFIG (as a Kubernetes indexed Job, or a person, sets
it).

With TF_CONFIG naming a cluster, `training.prepare_device` trains under MultiWorkerMirroredStrategy: every worker runs
the same training and their gradients are averaged at each step, so every worker ends with the same weights. The chief
(the `chief` task, else worker 0) is the training vidops knows: its MLflow run, its `models/<task>/`. Every other worker
writes its copy beside the chief's, `models/<task>.worker-<index>/` (on one machine the workers share the project
folder), and reports to nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from vidops.components.errors import VidopsError


@dataclass(frozen=True)
class Worker:
    index: int  # within its type (chief or worker)
    workers: int  # in the whole cluster, the chief included
    chief: bool


def worker() -> Worker | None:
    """This process's place in the cluster TF_CONFIG describes; None without TF_CONFIG (one process trains alone).
    A TF_CONFIG that cannot work is an error naming what is wrong."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise VidopsError(f"TF_CONFIG: not JSON ({exc.msg} at character {exc.pos})") from None
    cluster, task = config.get("cluster") or {}, config.get("task") or {}
    kind, index = task.get("type"), task.get("index")
    if not cluster.get("worker") and not cluster.get("chief"):
        raise VidopsError(
            'TF_CONFIG: its cluster names no workers; expected {"cluster": {"worker": ["host:port", ...]}, '
            '"task": {"type": "worker", "index": N}}'
        )
    if kind not in ("worker", "chief") or not isinstance(index, int) or not 0 <= index < len(cluster.get(kind) or []):
        raise VidopsError(
            f"TF_CONFIG: its task {task} is not one of its cluster's "
            f"({', '.join(f'{k}: {len(v)}' for k, v in cluster.items())})"
        )
    chief = kind == "chief" or (not cluster.get("chief") and index == 0)
    return Worker(index, len(cluster.get("worker") or []) + len(cluster.get("chief") or []), chief)

"""The classification task: its spec (spec.py), params, model, input batches, training, evaluation and demo data."""

from vidops.components.tasks.classification.spec import SPEC

__all__ = ["SPEC"]

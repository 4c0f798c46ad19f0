"""The captioning task: its spec (spec.py), params, model, input batches, training, evaluation and demo data."""

from vidops.components.tasks.captioning.spec import SPEC

__all__ = ["SPEC"]

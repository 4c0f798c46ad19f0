"""The audio-video sync task: its spec (spec.py), params, model, examples, training, evaluation and demo data."""

from vidops.components.tasks.sync.spec import SPEC

__all__ = ["SPEC"]

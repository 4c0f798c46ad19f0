"""train.colour: the task's own fit params."""

from __future__ import annotations

from pydantic import Field

from vidops.components.params import FitParams


class ColourParams(FitParams):
    units: int = Field(8, ge=1)
    epochs: int = Field(2, ge=1)
    patience: int = Field(2, ge=1)

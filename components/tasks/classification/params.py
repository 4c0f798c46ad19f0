"""train.classification: the classifier's fit params."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vidops.components.params import FrameEncoderParams


class ClassifierParams(FrameEncoderParams):
    epochs: int = Field(60, ge=1)
    patience: int = Field(16, ge=1)  # the demo's 35 validation clips: a shorter wait ended good runs on a noisy dip
    temporal: Literal["conv", "lstm", "2plus1d"] = "conv"
    filters: tuple[int, ...] = (8, 16, 32)

"""train.sync: the sync model's fit params, and the window and offsets they define."""

from __future__ import annotations

from pydantic import Field

from vidops.components.params import FrameEncoderParams


class SyncParams(FrameEncoderParams):
    window: int = Field(15, ge=2)  # T: video frames the model sees
    max_offset: int = Field(15, ge=1)  # K: offsets -K..K frames, a (2K+1)-way class
    units: int = Field(64, ge=1)  # LSTM
    bidirectional: bool = True
    windows_per_clip: int = Field(32, ge=1)  # random (window, offset) examples drawn from each clip per epoch
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(32, ge=1)

    @property
    def span(self) -> int:
        """The frames a window's audio covers: the window and K frames either side."""
        return self.window + 2 * self.max_offset

    @property
    def offsets(self) -> tuple[int, ...]:
        """The offsets the model tells apart, -K..K frames: its classes, in order."""
        return tuple(range(-self.max_offset, self.max_offset + 1))

"""train.captioning: the captioner's fit params, and how it says a caption."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from vidops.components.params import FrameEncoderParams


class CaptionerParams(FrameEncoderParams):
    filters: tuple[int, ...] = (16, 32, 64)
    two_stream: bool = True  # its words name the shape apart from the motion: see layers.frame_encoder
    units: int = Field(128, ge=1)  # frame features, the decoder's LSTM and its attention
    embedding: int = Field(64, ge=1)  # a word's vector
    attention: Literal["additive", "dot"] = "additive"  # Bahdanau's or Luong's score of a frame for a word
    dropout: float = Field(0.2, ge=0, lt=1)
    word_dropout: float = Field(
        0.25, ge=0, lt=1
    )  # training: a word the decoder reads is <unk> this often, so it looks at the frames
    max_length: int = Field(16, ge=1)  # words of a caption; a longer one is cut, and counted in the report
    min_word_count: int = Field(1, ge=1)  # a training word seen fewer times becomes <unk>
    beam_size: int = Field(3, ge=1)  # 1: greedy decoding
    length_penalty: float = Field(0.6, ge=0)  # GNMT's alpha: a beam's log-probability over ((5 + words) / 6) ** alpha
    epochs: int = Field(80, ge=1)
    batch_size: int = Field(32, ge=1)
    augment: bool = False  # random crops only: a flip would swap left and right, and colour jitter the colour words

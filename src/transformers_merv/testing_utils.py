"""A tiny MERV config and synthetic videos for tests, benchmarks and examples (in the package so that scripts outside
`tests/` import them the same way, as `transformers.testing_utils` serves transformers' own)."""

from pathlib import Path

import av
import numpy as np

from .configuration_merv import MervConfig


def tiny_config(**overrides) -> MervConfig:
    """A MERV config small enough for CPU tests, with the shapes of the tiny reference fixtures. Overrides replace
    fields; a `dict` given for a sub-config (`text_config`, `languagebind_config`, ...) updates that sub-config's
    settings instead of replacing them."""
    settings = dict(
        text_config=dict(
            model_type="llama",
            vocab_size=1024,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            pad_token_id=1000,
            bos_token_id=1,
            eos_token_id=2,
        ),
        languagebind_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            image_size=32,
            patch_size=2,
            temporal_group_size=8,
        ),
        dinov2_config=dict(
            hidden_size=40,
            num_hidden_layers=3,
            num_attention_heads=4,
            patch_size=14,
            image_size=56,
            mlp_ratio=4,
        ),
        vivit_config=dict(
            hidden_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=96,
            image_size=28,
            tubelet_size=[2, 2, 2],
            num_frames=32,
        ),
        siglip_config=dict(
            hidden_size=24,
            intermediate_size=96,
            num_hidden_layers=3,
            num_attention_heads=2,
            patch_size=16,
            image_size=64,
            vision_use_head=False,
            hidden_act="gelu",
        ),
        alignment_tokens_per_frame=4,
        fusion_hidden_size=24,
        video_token_id=1001,
    )
    for key, value in overrides.items():
        settings[key] = {**settings[key], **value} if key.endswith("_config") and key in settings else value
    return MervConfig(**settings)


MOVING_SQUARE_BACKGROUND = 245
MOVING_SQUARE_TOP = 24
MOVING_SQUARE_FPS = 8


def write_moving_square(
    path: Path, color: tuple[int, int, int], step: int, frames: int = 32, side: int = 64, square: int = 16
) -> Path:
    """An h264 mp4 of a `square`-pixel square of `color` crossing a light `side`-pixel frame `step` pixels per frame
    (negative: right to left, wrapping around), `frames` frames long."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=MOVING_SQUARE_FPS)
        stream.width = stream.height = side
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            image = np.full((side, side, 3), MOVING_SQUARE_BACKGROUND, dtype=np.uint8)
            left = (index * step) % (side - square)
            image[MOVING_SQUARE_TOP : MOVING_SQUARE_TOP + square, left : left + square] = color
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


__all__ = ["tiny_config", "write_moving_square"]

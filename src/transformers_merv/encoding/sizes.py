"""How many bytes a video's features take in a feature store, from a config's `frozen_feature_shapes`."""

import math

import torch

from ..configuration_merv import MervConfig
from ..inference.feature_store import FLIPPED_ENCODER


def feature_bytes_per_video(config: MervConfig, dtype: torch.dtype, flipped_languagebind: bool = False) -> int:
    """Bytes of one video's stored tensors: every encoder's `(tokens, dim)` in `dtype` (and LanguageBind's again for
    the flipped clip), without the shards' safetensors headers."""
    shapes = config.frozen_feature_shapes()
    values = sum(math.prod(shape) for shape in shapes.values())
    if flipped_languagebind:
        values += math.prod(shapes[FLIPPED_ENCODER])
    return values * dtype.itemsize


__all__ = ["feature_bytes_per_video"]

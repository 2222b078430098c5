"""`merv encode` as a library: a feature store (`inference.feature_store`) built from videos, folders, training data
and evaluation question files.

- `sources`: the media items (a file and its clip window) of the sources, checked before any model work.
- `run`: `encode_features`, data-parallel over launched processes, each item encoded once, resumable.
- `sizes`: the bytes one video's features take in a store (`feature_bytes_per_video`).
"""

from .run import DEFAULT_BATCH_SIZE, EncodeSummary, check_encode_arguments, encode_features
from .sizes import feature_bytes_per_video
from .sources import IMAGE_EXTENSIONS, EncodingInputError, MediaItem, list_media


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "IMAGE_EXTENSIONS",
    "EncodeSummary",
    "EncodingInputError",
    "MediaItem",
    "check_encode_arguments",
    "encode_features",
    "feature_bytes_per_video",
    "list_media",
]

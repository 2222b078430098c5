"""Where an evaluation's visual tokens come from: decoded and encoded live (`LiveVideoFeatures`), or computed from the
frozen features of a feature store (`StoredVideoFeatures`, see `feature_store`), videos missing from it encoded live
and, with a writer, added to it.

    with open_video_features(model, processor, FeatureStore.open("features/"), add=True) as source:
        loaded = source.load("clip.mp4")                     # the store's frozen features, or computed now
        prefix = prefill_video_features(model, processor, source.features([loaded]))

Both give the same visual tokens: the store's features are `get_frozen_video_features`' output, completed by
`get_video_features_from_frozen` (projectors and fusion), the same modules `get_video_features` runs after the
encoders. A store is used only when its fingerprint is the model's and processor's (`feature_fingerprint`).
"""

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from ..media_limits import MediaLimitError, check_regular_file, is_url
from ..modeling_merv import MervVideoFeaturesOutput
from .feature_store import FeatureStore, StoreWriter, compute_frozen_features, feature_fingerprint, feature_key
from .prefix_cache import VideoPrefix, prefill_video_features, process_video


Window = Mapping[str, float | int] | None
"""A clip window (`video_io.clip_window`), part of a stored video's key."""


class LiveVideoFeatures:
    """Visual tokens computed from the video: decoding, the encoders, alignment and fusion."""

    def __init__(self, model, processor):
        self.model, self.processor = model, processor

    def load(self, video: str | os.PathLike, window: Window = None) -> Any:
        """What `features` needs of one video: its `pixel_values_videos`, `(1, D)`. Raises `OSError` or
        `ValueError` for a video that cannot be read."""
        return process_video(self.processor, video, window)

    @torch.inference_mode()
    def features(self, loaded: Sequence[Any]) -> MervVideoFeaturesOutput:
        """The visual tokens of a batch of `load`ed videos, in order."""
        pixels = torch.cat(list(loaded)).to(self.model.device, self.model.dtype)
        return self.model.get_video_features(pixels)

    def prefill(
        self, video: str | os.PathLike, window: Window = None, chat_template: str | None = None
    ) -> VideoPrefix:
        """`prefix_cache.prefill_video` with the visual tokens of this source."""
        return prefill_video_features(
            self.model, self.processor, self.features([self.load(video, window)]), chat_template
        )

    def report(self) -> str | None:
        """A line on where the features came from, if there is anything to say."""
        return None

    def flush(self) -> None:
        """Complete what is being written (nothing: live features are not kept)."""


class RecordedFailure(ValueError):
    """The feature store records the video as unreadable (the error its encoder gave, as the message)."""


@dataclass
class StoreCounts:
    """What a `StoredVideoFeatures` did with the videos asked for (loads, not distinct videos)."""

    read: int = 0
    encoded: int = 0
    added: int = 0
    failed: int = 0


class StoredVideoFeatures(LiveVideoFeatures):
    """Visual tokens from a feature store's frozen features; a video it lacks is encoded live (counted) and, with a
    `writer`, added to it; a video it records as unreadable is refused with its recorded error."""

    def __init__(self, model, processor, store: FeatureStore, writer: StoreWriter | None = None):
        super().__init__(model, processor)
        self.store, self.writer = store, writer
        self.counts = StoreCounts()
        self._written: dict[str, dict[str, torch.Tensor] | str] = {}
        """What the writer holds for the store but has not completed yet: features, or why the video failed."""

    @classmethod
    def checked(cls, model, processor, store: FeatureStore, add: bool = False) -> "StoredVideoFeatures":
        """Features of `store` for `model` and `processor`, refused (`FeatureStoreMismatchError` naming the
        differences) unless the store's fingerprint is theirs (at the model's dtype); with `add`, with a writer of
        its own (`flush` completes its shard)."""
        store.check(feature_fingerprint(model, processor, model.dtype))  # stored as the live path computes them
        return cls(model, processor, store, StoreWriter(store) if add else None)

    def load(self, video: str | os.PathLike, window: Window = None) -> dict[str, torch.Tensor]:
        """The video's frozen features, `{encoder: (tokens, dim)}`: the store's, else computed now. Raises
        `RecordedFailure` for a video the store records as unreadable, `OSError` or `ValueError` for one that cannot
        be read now."""
        if is_url(video):
            return self._encode(video, window)
        check_regular_file(video, repr(os.fspath(video)))  # as decoding would, before hashing the file
        sha256 = self.store.key_for(video)
        key = feature_key(sha256, window)
        recorded = self.store.failure(key) or self._written.get(key)
        if isinstance(recorded, str):
            self.counts.failed += 1
            raise RecordedFailure(recorded)
        stored = self.store.get(key) or recorded
        if stored is None:
            return self._encode(video, window, key, sha256)
        self.counts.read += 1
        return stored

    def _encode(
        self, video: str | os.PathLike, window: Window, key: str | None = None, sha256: str | None = None
    ) -> dict[str, torch.Tensor]:
        """Frozen features computed live; added to the store with a writer (a local file only: `key` known)."""
        writer = self.writer if key is not None else None
        try:
            pixels = super().load(video, window)
        except MediaLimitError:
            raise  # a limit of this run, not a property of the video: not recorded
        except (OSError, ValueError) as err:
            if writer is not None:
                writer.add_failure(video, window, str(err))
                self._wrote(key, str(err))
            raise
        flip = writer is not None and self.store.flipped_languagebind
        features, flipped = compute_frozen_features(self.model, pixels, flipped_languagebind=flip)
        frozen = {name: tensor[0] for name, tensor in features.items()}
        self.counts.encoded += 1
        if writer is not None:
            writer.add(video, window, frozen, sha256=sha256, flipped_languagebind=flipped[0] if flip else None)
            self.counts.added += 1
            self._wrote(key, frozen)
        return frozen

    def _wrote(self, key: str, written: dict[str, torch.Tensor] | str) -> None:
        """Keep what the writer holds until its shard is complete (then the store has it): a video asked for again
        (per question) is neither encoded nor written twice."""
        self._written[key] = written
        if key in self.store or self.store.failure(key) is not None:  # the writer completed a shard
            self._written.clear()

    @torch.inference_mode()
    def features(self, loaded: Sequence[Mapping[str, torch.Tensor]]) -> MervVideoFeaturesOutput:
        """The visual tokens of a batch of `load`ed videos: the projectors and fusion on their frozen features."""
        device = self.model.device  # stored features are on the CPU, those computed now on the model's device
        frozen = {name: torch.stack([video[name].to(device) for video in loaded]) for name in loaded[0]}
        return getattr(self.model, "model", self.model).get_video_features_from_frozen(frozen)

    def flush(self) -> None:
        """Complete the writer's shard, so that the videos added so far are in the store."""
        if self.writer is not None:
            self.writer.flush()
            self._written.clear()

    def report(self) -> str:
        counts = self.counts
        added = f", {counts.added} added to it" if self.writer is not None else ""
        return (
            f"feature store {self.store.path}: {counts.read} videos read from it, {counts.encoded} encoded live"
            f"{added}, {counts.failed} recorded as unreadable"
        )


def video_features_for(model, processor, store: FeatureStore | None = None, add: bool = False) -> LiveVideoFeatures:
    """`StoredVideoFeatures.checked(model, processor, store, add)`, or `LiveVideoFeatures` without a store."""
    if store is None:
        return LiveVideoFeatures(model, processor)
    return StoredVideoFeatures.checked(model, processor, store, add)


@contextmanager
def open_video_features(
    model, processor, store: FeatureStore | None = None, add: bool = False
) -> Iterator[LiveVideoFeatures]:
    """`video_features_for(model, processor, store, add)` for the block, flushed when it ends (also on an error)."""
    source = video_features_for(model, processor, store, add)
    try:
        yield source
    finally:
        source.flush()


__all__ = [
    "LiveVideoFeatures",
    "RecordedFailure",
    "StoreCounts",
    "StoredVideoFeatures",
    "open_video_features",
    "video_features_for",
]

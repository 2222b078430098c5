"""`merv encode` as a library function (`encode_features`): a feature store (`inference.feature_store`) built from
videos, folders, training data and question files, data-parallel over launched processes and resumable.

    torchrun --nproc_per_node N -m transformers_merv.cli encode SOURCE ... --output STORE

- **What is stored:** each item's frozen features (`MervVideoModel.get_frozen_video_features`: the encoders and the
  parameter-free pooling), decoded by the model's video processor (without its random flip; with
  `flipped_languagebind`, LanguageBind's features of the flipped clip are kept too). The model is loaded in `dtype`
  (only its video half, `MervVideoModel`) and the features are computed and stored in that dtype: the store's
  fingerprint records it, and the weights digest the weights' own dtype, so a reader must load the model as the
  store was built.
- **Each item once:** items are keyed by their content's SHA-256 and clip window (`FeatureStore.key_for`); the same
  content under several paths is encoded once, and keys already stored, or recorded as unreadable, are skipped: a
  rerun after a kill encodes only what is missing. An item that cannot be decoded is recorded as unreadable with its
  reason, reported, and not retried.
- **Processes:** the processes (`evaluation.runs.launched_processes`) hash a share of the files each and exchange the
  digests; the first process lists the keys still missing and hands them out in turn, so every key goes to exactly
  one process. Each process writes its own shards and index (`StoreWriter`).
"""

import copy
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from ..evaluation.runs import from_main_process, launched_processes
from ..inference.batching import batches, group_by
from ..inference.devices import DTYPES
from ..inference.feature_store import FeatureStore, compute_frozen_features, feature_fingerprint, feature_key
from ..inference.loading import AUTO, load_model, load_processor
from ..modeling_merv import MervVideoModel
from ..utils.console import first_line
from ..video_io import load_image
from .sources import EncodingInputError, MediaItem, list_media


DEFAULT_BATCH_SIZE = 8
"""Videos per call of the encoders."""
UNREADABLE_ERRORS = (OSError, ValueError)
"""What decoding raises for a missing, corrupt, unsupported or oversized file, or a clip window outside the video
(`VideoDecodingError` and `MediaLimitError` are `ValueError`s)."""
BYTES_PER_GB = 10**9
VIDEOS_PER_REPORTED_SIZE = 1000
"""The store's size is reported per this many videos."""


@dataclass(frozen=True)
class EncodeSummary:
    """What one `encode_features` run did, over every process."""

    store: Path
    encoded: int
    """Items encoded and stored by this run."""
    already_stored: int
    """Items whose key the store held already (skipped)."""
    unreadable: int
    """Items that could not be decoded, recorded by this run."""
    unreadable_before: int
    """Items recorded as unreadable by an earlier run (not retried)."""
    duplicates: int
    """Items whose content and window another item of the sources has (encoded once)."""
    videos_in_store: int
    store_bytes: int
    seconds: float

    @property
    def gb_per_1000_videos(self) -> float | None:
        """The store's shards' size per 1,000 stored videos, in GB (10^9 bytes)."""
        if not self.videos_in_store:
            return None
        return self.store_bytes / self.videos_in_store * VIDEOS_PER_REPORTED_SIZE / BYTES_PER_GB

    def report(self) -> str:
        """Two lines: what was done, and the store's size."""
        rate = f" ({self.encoded / self.seconds:.2f} videos/s)" if self.encoded and self.seconds else ""
        done = (
            f"encoded {self.encoded} videos in {self.seconds:.1f} s{rate}; skipped {self.already_stored} (already "
            f"stored); unreadable {self.unreadable + self.unreadable_before} ({self.unreadable_before} recorded "
            f"earlier, not retried); {self.duplicates} duplicates (same content) encoded once"
        )
        per_1000 = "" if self.gb_per_1000_videos is None else f", {self.gb_per_1000_videos:.3f} GB per 1,000 videos"
        return f"{done}\n{self.store}: {self.videos_in_store} videos, {self.store_bytes} bytes{per_1000}"


@dataclass(frozen=True)
class _Work:
    """One item with its content digest and key."""

    item: MediaItem
    sha256: str

    @property
    def key(self) -> str:
        return feature_key(self.sha256, self.item.window)


@dataclass(frozen=True)
class _Plan:
    """The first process's split of the items: what is left to encode (in order), and the counts of the rest."""

    pending: list[_Work]
    already_stored: int
    unreadable_before: int
    duplicates: int


def check_encode_arguments(output: str | Path, dtype: str, batch_size: int) -> None:
    """Raise `EncodingInputError` for an `output` that is not a folder, or a bad `dtype` or `batch_size`."""
    if Path(output).exists() and not Path(output).is_dir():
        raise EncodingInputError(f"--output {output} is a file; a feature store is a folder")
    if dtype not in (AUTO, *DTYPES):
        raise EncodingInputError(f"dtype must be one of {(AUTO, *DTYPES)}, got {dtype!r}")
    if batch_size < 1:
        raise EncodingInputError(f"batch size must be >= 1, got {batch_size}")


def encode_features(
    sources: Sequence[str | Path],
    output: str | Path,
    model: str,
    video_dir: str | Path | None = None,
    dtype: str = AUTO,
    batch_size: int = DEFAULT_BATCH_SIZE,
    flipped_languagebind: bool | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> EncodeSummary | None:
    """Encode the media of `sources` (`encoding.sources`; JSON sources resolve against `video_dir`) with the model
    `model` (folder or Hub id) in `dtype`, `batch_size` videos per encoder call, into the feature store `output`
    (created if absent), in this process or in each of those a launcher started (see the module).
    `flipped_languagebind` (default: the processor's `languagebind_random_flip`) also keeps LanguageBind's features
    of the flipped clips.

    Returns the `EncodeSummary` in the first process and `None` in the others. The inputs are checked before any
    model work: `EncodingInputError` (sources, `video_dir`, `output`, `dtype`, `batch_size`),
    `inference.loading.ModelLoadError`, and `FeatureStoreMismatchError` for a store built with other settings,
    weights or dtype (naming what differs).
    """
    check_encode_arguments(output, dtype, batch_size)
    items = list_media(sources, video_dir)
    started = time.monotonic()
    with launched_processes(device) as (state, process_device):
        processor = load_processor(model)
        video_model = load_model(model, process_device, dtype, model_class=MervVideoModel)
        flip = (
            processor.video_processor.languagebind_random_flip
            if flipped_languagebind is None
            else flipped_languagebind
        )
        store = FeatureStore.create(output, feature_fingerprint(video_model, processor, video_model.dtype), flip)
        works = _hashed(items, store, state)
        plan = from_main_process(_plan(works, store) if state.is_main_process else None)
        share = plan.pending[state.process_index :: state.num_processes]
        _announce(state, plan, share)
        encoder = _Encoder(video_model, processor, store, batch_size)
        encoded, unreadable = encoder.run(share, progress and state.is_main_process)
        counts = gather_object([(encoded, unreadable)])
        state.wait_for_everyone()
        if not state.is_main_process:
            return None
        store.refresh()
        return EncodeSummary(
            store=Path(output),
            encoded=sum(count[0] for count in counts),
            already_stored=plan.already_stored,
            unreadable=sum(count[1] for count in counts),
            unreadable_before=plan.unreadable_before,
            duplicates=plan.duplicates,
            videos_in_store=len(store),
            store_bytes=store.size_bytes(),
            seconds=time.monotonic() - started,
        )


def _hashed(items: Sequence[MediaItem], store: FeatureStore, state: PartialState) -> list[_Work]:
    """`items` with their digests, each file hashed by one process (the index's digest when the file is unchanged)."""
    paths = list(dict.fromkeys(item.path for item in items))
    digests = {}  # a file's key without a window is its digest
    for part in gather_object(
        [{path: store.key_for(path) for path in paths[state.process_index :: state.num_processes]}]
    ):
        digests.update(part)
    return [_Work(item, digests[item.path]) for item in items]


def _plan(works: Sequence[_Work], store: FeatureStore) -> _Plan:
    """The works still to encode (one per key, in order of first appearance) and the counts of the others."""
    unique = [group[0] for group in group_by(works, lambda work: work.key)]
    unreadable_before = sum(store.failure(work.key) is not None for work in unique)
    already_stored = sum(work.key in store for work in unique)
    pending = [work for work in unique if work.key not in store and store.failure(work.key) is None]
    return _Plan(pending, already_stored, unreadable_before, len(works) - len(unique))


def _announce(state: PartialState, plan: _Plan, share: Sequence[_Work]) -> None:
    """One stderr line per process when there are several, or when the store already holds some of the items."""
    if state.num_processes > 1:
        print(
            f"process {state.process_index} of {state.num_processes}: {len(share)} of {len(plan.pending)} videos "
            "to encode",
            file=sys.stderr,
        )
    elif state.is_main_process and plan.already_stored + plan.unreadable_before:
        print(
            f"resuming: {plan.already_stored} videos already stored, {plan.unreadable_before} recorded as unreadable",
            file=sys.stderr,
        )


class _Encoder:
    """Decodes, encodes and stores one process's share of the work, `batch_size` videos per encoder call."""

    def __init__(self, model: MervVideoModel, processor, store: FeatureStore, batch_size: int):
        self.model = model
        self.store = store
        self.batch_size = batch_size
        self.video_processor = copy.copy(processor.video_processor)
        self.video_processor.languagebind_random_flip = False  # flipped features are stored beside the clip's

    def run(self, works: Sequence[_Work], progress: bool) -> tuple[int, int]:
        """Encode `works`; returns how many were encoded and how many could not be read."""
        encoded = unreadable = 0
        bar = tqdm(total=len(works), desc="encode", unit="video", disable=not progress)
        with self.store.writer() as writer:
            for batch in batches(works, self.batch_size):
                decoded = []
                for work in batch:
                    try:
                        decoded.append((work, self._pixels(work.item)))
                    except UNREADABLE_ERRORS as error:
                        reason = first_line(error)
                        print(f"warning: cannot read {work.item.path}: {reason}", file=sys.stderr)
                        writer.add_failure(work.item.path, work.item.window, reason)
                        unreadable += 1
                if decoded:
                    self._store(writer, decoded)
                    encoded += len(decoded)
                bar.update(len(batch))
        bar.close()
        return encoded, unreadable

    def _pixels(self, item: MediaItem) -> torch.Tensor:
        """`(1, D)` pixels of one item: a video decoded in its window, or an image as a one-frame video."""
        media = load_image(item.path, str(item.path)) if item.kind == "image" else str(item.path)
        return self.video_processor([media], **item.window)["pixel_values_videos"]

    def _store(self, writer, decoded: Sequence[tuple[_Work, torch.Tensor]]) -> None:
        pixels = torch.cat([row for _, row in decoded])
        features, flipped = compute_frozen_features(self.model, pixels, self.store.flipped_languagebind)
        for row, (work, _) in enumerate(decoded):
            writer.add(
                work.item.path,
                work.item.window,
                {name: tensor[row] for name, tensor in features.items()},
                sha256=work.sha256,
                flipped_languagebind=None if flipped is None else flipped[row],
            )


__all__ = ["DEFAULT_BATCH_SIZE", "EncodeSummary", "check_encode_arguments", "encode_features"]

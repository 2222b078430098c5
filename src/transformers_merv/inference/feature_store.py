"""A feature store: the frozen part of MERV (decoding, the four encoders, the alignment pooling when it has no
parameters) computed once per video and kept on disk, for training, evaluation and serving to read instead.

    store = FeatureStore.open("features/", feature_fingerprint(model, processor))
    frozen = store.get(store.key_for("clip.mp4"))          # {encoder: (tokens, dim)}, or None when not stored
    outputs = model.get_video_features_from_frozen({name: f[None] for name, f in frozen.items()})

Layout of a store folder:

- `store.json`: the format version, whether flipped LanguageBind features are kept, and the **fingerprint**: everything
  that decides the features (the video processor's sampling and transforms, each encoder's config, weights digest,
  feature layer, prefix selection and final norm, the pooling, the stored dtype). Opening a store with another
  fingerprint raises `FeatureStoreMismatchError` naming what differs: a stale feature is never used.
- `shard-<id>.safetensors`: tensors `<key>/<encoder>` (and `<key>/languagebind@flipped`), `(tokens, dim)` each.
- `index-<id>.jsonl`: one JSON record per video, appended only after its shard is complete on disk (`fsync`, then an
  atomic rename): `key`, `shard`, `source` (the file it was read from), `size`, `mtime_ns`, `sha256`, `window`, or
  `error` for a video that could not be read. A killed writer loses only the videos not yet in a complete shard.
  Every writer (a process of `merv encode`, an evaluation adding missing videos) has its own shard and index files,
  so writers never contend.

A video's **key** is the SHA-256 of its file's bytes, plus its clip window when it has one: a renamed or copied video
is found again, an edited one is not. `key_for` reads the digest from the index when the file's size and
modification time are those recorded, and hashes the file otherwise.
"""

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import save_file


FORMAT_VERSION = 1
MANIFEST = "store.json"
LOCK = "store.lock"
INDEX_PATTERN = "index-*.jsonl"
FLIPPED = "@flipped"
"""Suffix of the tensor of LanguageBind's features for the horizontally flipped clip."""
FLIPPED_ENCODER = "languagebind"
"""The encoder whose input the authors' random flip changes (`MervVideoProcessor.languagebind_random_flip`)."""
SHARD_BYTES = 512 * 2**20
"""A writer completes a shard once it holds this many bytes of features..."""
SHARD_SECONDS = 60.0
"""...or this many seconds after its first video, so a killed run loses at most about a minute of work."""
IRRELEVANT_CONFIG_KEYS = frozenset(
    {
        "_attn_implementation_autoset",
        "_name_or_path",
        "architectures",
        "attn_implementation",
        "dtype",
        "id2label",
        "label2id",
        "output_attentions",
        "output_hidden_states",
        "problem_type",
        "return_dict",
        "torch_dtype",
        "transformers_version",
        "use_cache",
    }
)
"""Config keys that do not change an encoder's features (bookkeeping, outputs, the attention kernel)."""
IRRELEVANT_PROCESSOR_KEYS = frozenset(
    {
        "device",
        "languagebind_random_flip",
        "processor_class",
        "return_metadata",
        "return_tensors",
        "video_processor_type",
    }
)
"""Video processor keys that do not change the stored features (the flip is kept apart: `flipped_languagebind`)."""
DIGEST_CHUNK = 2**20


class FeatureStoreError(ValueError):
    """A feature store cannot be used as asked (missing, of another format, lacking a video)."""


class FeatureStoreMismatchError(FeatureStoreError):
    """The store's features were computed with other settings or weights than the model and processor given."""


# --- fingerprints ----------------------------------------------------------------------------------------------------


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers: names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def feature_fingerprint(model, processor, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Everything that decides the frozen features `model` (a MERV model, or a PEFT model wrapping one) computes
    from what `processor` makes of a video, stored as `dtype`. Without `dtype` (a reader that takes the features in
    whatever precision they were stored), the stored dtype is left out, and not compared."""
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    video_model = getattr(model, "model", model)
    config = video_model.config
    shapes = config.frozen_feature_shapes()
    pooled = config.alignment_pooling
    encoders = {}
    for name in config.vision_encoders:
        encoder_config = config.encoder_config(name).to_dict()
        encoders[name] = {
            "config": {key: value for key, value in encoder_config.items() if key not in IRRELEVANT_CONFIG_KEYS},
            "weights": weights_digest(video_model.vision_towers[name]),
            "compute_dtype": str(video_model.vision_towers[name].dtype).removeprefix("torch."),
            "num_frames": config.num_frames[name],
            "feature_layer": config.vision_feature_layer[name],
            "select_strategy": config.vision_feature_select_strategy[name],
            "final_norm": config.vision_feature_final_norm[name],
            "shape": list(shapes[name]),
        }
    preprocessing = processor.video_processor.to_dict()
    fingerprint = {
        "encoders": encoders,
        "pooling": {
            "alignment_pooling": pooled,
            "alignment_tokens_per_frame": config.alignment_tokens_per_frame,
            "alignment_temporal_stride": config.alignment_temporal_stride,
        },
        "preprocessing": {key: value for key, value in preprocessing.items() if key not in IRRELEVANT_PROCESSOR_KEYS},
    }
    if dtype is not None:
        fingerprint["dtype"] = str(dtype).removeprefix("torch.")
    return fingerprint


def fingerprint_differences(expected: Any, found: Any, path: str = "") -> list[str]:
    """`path: found vs expected` for every leaf where two fingerprints differ."""
    if isinstance(expected, dict) and isinstance(found, dict):
        differences = []
        for key in sorted(set(expected) | set(found), key=str):
            differences += fingerprint_differences(expected.get(key), found.get(key), f"{path}.{key}".lstrip("."))
        return differences
    if expected == found:
        return []
    return [f"{path or 'fingerprint'}: store has {_short(found)}, this model and processor give {_short(expected)}"]


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


# --- keys ------------------------------------------------------------------------------------------------------------


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def feature_key(sha256: str, window: Mapping[str, float | int] | None = None) -> str:
    """A video's key: its content digest, and its clip window (`video_io.clip_window`) when it has one."""
    if not window:
        return sha256
    return sha256 + "@" + ",".join(f"{name}={value!r}" for name, value in sorted(window.items()))


@dataclass(frozen=True)
class StoredVideo:
    """One index record: where a video's features are, or why it could not be encoded."""

    key: str
    source: str
    size: int
    mtime_ns: int
    sha256: str
    window: dict[str, float | int] = field(default_factory=dict)
    shard: str | None = None
    error: str | None = None


def _source_record(path: Path, window: Mapping[str, float | int] | None, sha256: str) -> dict[str, Any]:
    stat = path.stat()
    return {
        "key": feature_key(sha256, window),
        "source": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": sha256,
        "window": dict(window or {}),
    }


# --- computing them -------------------------------------------------------------------------------------------------


@torch.inference_mode()
def compute_frozen_features(
    model, pixel_values_videos: torch.Tensor, flipped_languagebind: bool = False
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The frozen features of a batch of processed videos (`(videos, D)`, processed without the random flip) and,
    with `flipped_languagebind`, LanguageBind's features of the horizontally flipped clips: the authors' flip
    (`MervVideoProcessor.languagebind_random_flip`) mirrors LanguageBind's normalised frames, as done here."""
    video_model = getattr(model, "model", model)
    pixels = pixel_values_videos.to(video_model.device, video_model.dtype)
    features = video_model.get_frozen_video_features(pixels)
    if not flipped_languagebind:
        return features, None
    by_encoder = dict(video_model.split_pixel_values_videos(pixels))
    by_encoder[FLIPPED_ENCODER] = by_encoder[FLIPPED_ENCODER].flip(-1)
    flipped = video_model.get_frozen_video_features(by_encoder, encoders=[FLIPPED_ENCODER])[FLIPPED_ENCODER]
    return features, flipped


# --- the store -------------------------------------------------------------------------------------------------------


class FeatureStore:
    """A folder of frozen features (see the module docstring). `open` one to read (and add to) it, `create` one to
    build it; `writer()` adds videos."""

    def __init__(self, path: str | os.PathLike, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest
        self._records: dict[str, StoredVideo] = {}
        self._by_source: dict[str, StoredVideo] = {}
        self._index_offsets: dict[Path, int] = {}
        self._handles: dict[tuple[int, str], Any] = {}
        self.refresh()

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.manifest["fingerprint"]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the features are stored in."""
        return getattr(torch, self.fingerprint["dtype"])

    @property
    def flipped_languagebind(self) -> bool:
        """Whether LanguageBind's features of the flipped clip are kept too (for `languagebind_random_flip`)."""
        return self.manifest["flipped_languagebind"]

    @classmethod
    def open(cls, path: str | os.PathLike, fingerprint: dict[str, Any] | None = None) -> "FeatureStore":
        """An existing store; with `fingerprint`, checked to be the store's (`FeatureStoreMismatchError` if not)."""
        manifest_path = Path(path) / MANIFEST
        if not manifest_path.is_file():
            raise FeatureStoreError(f"{path}: not a feature store (no {MANIFEST}); build one with `merv encode`")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise FeatureStoreError(f"{manifest_path}: cannot read it: {error}") from error
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise FeatureStoreError(f"{manifest_path}: feature store format {found!r}, expected {FORMAT_VERSION}")
        store = cls(path, manifest)
        if fingerprint is not None:
            store.check(fingerprint)
        return store

    @classmethod
    def create(
        cls, path: str | os.PathLike, fingerprint: dict[str, Any], flipped_languagebind: bool = False
    ) -> "FeatureStore":
        """The store at `path`, created if absent. An existing one must have this fingerprint; asking for flipped
        features of a store built without them is refused (its videos would lack them)."""
        if "dtype" not in fingerprint:
            raise ValueError("a feature store is created with the dtype it stores: `feature_fingerprint(..., dtype)`")
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        with FileLock(folder / LOCK):
            if not (folder / MANIFEST).exists():
                manifest = {"format": FORMAT_VERSION, "flipped_languagebind": flipped_languagebind}
                _write_atomically(folder / MANIFEST, json.dumps({**manifest, "fingerprint": fingerprint}, indent=1))
        store = cls.open(folder, fingerprint)
        if flipped_languagebind and not store.flipped_languagebind:
            raise FeatureStoreMismatchError(
                f"{folder}: built without flipped LanguageBind features; build a new store to keep them"
            )
        return store

    def check(self, fingerprint: dict[str, Any]) -> None:
        """Raise `FeatureStoreMismatchError` naming every difference between the store's fingerprint and this one
        (in the parts `fingerprint` has: a reader's may leave out the stored dtype)."""
        stored = {part: value for part, value in self.fingerprint.items() if part in fingerprint}
        differences = fingerprint_differences(fingerprint, stored)
        if differences:
            listed = "; ".join(differences)
            raise FeatureStoreMismatchError(
                f"{self.path}: its features were computed with other settings or weights ({listed}); use the model, "
                "processor and dtype it was built with, or build a new store with `merv encode`"
            )

    def refresh(self) -> None:
        """Read the index records written since the last read (by this or other processes)."""
        for index in sorted(self.path.glob(INDEX_PATTERN)):
            with open(index, "rb") as file:
                file.seek(self._index_offsets.get(index, 0))
                for line in file:
                    if not line.endswith(b"\n"):  # a record being written: read it next time
                        break
                    self._index_offsets[index] = self._index_offsets.get(index, 0) + len(line)
                    self._add_record(StoredVideo(**json.loads(line)))

    def _add_record(self, record: StoredVideo) -> None:
        if record.key in self._records and record.error is not None:
            return  # a video stored by one writer stays stored when another could not read it
        self._records[record.key] = record
        self._by_source[record.source] = record

    def __len__(self) -> int:
        return sum(record.error is None for record in self._records.values())

    def __contains__(self, key: str) -> bool:
        record = self._records.get(key)
        return record is not None and record.error is None

    def failure(self, key: str) -> str | None:
        """Why the video of `key` could not be encoded, if it could not."""
        record = self._records.get(key)
        return None if record is None else record.error

    def key_for(self, video: str | os.PathLike, window: Mapping[str, float | int] | None = None) -> str:
        """The key of a video file and clip window, hashing the file unless the index has its digest for this size
        and modification time."""
        return feature_key(self._sha256(Path(video)), window)

    def _sha256(self, path: Path) -> str:
        stat = path.stat()
        known = self._by_source.get(str(path.resolve()))
        if known is not None and (known.size, known.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
            return known.sha256
        return file_sha256(path)

    def get(self, key: str, flipped: bool = False) -> dict[str, torch.Tensor] | None:
        """`{encoder: (tokens, dim)}` of a stored video (with `flipped`, LanguageBind's of the flipped clip), or None
        when it is not stored."""
        record = self._records.get(key)
        if record is None or record.error is not None:
            return None
        if flipped and not self.flipped_languagebind:
            raise FeatureStoreError(
                f"{self.path}: holds no flipped LanguageBind features (for `languagebind_random_flip`); build the "
                "store with `merv encode --flipped-languagebind`"
            )
        handle = self._shard(record.shard)
        features = {}
        for encoder in self.fingerprint["encoders"]:
            flip = FLIPPED if flipped and encoder == FLIPPED_ENCODER else ""
            features[encoder] = handle.get_tensor(f"{key}/{encoder}{flip}")
        return features

    def _shard(self, name: str):
        """This process's open handle of a shard (handles are not shared with forked DataLoader workers)."""
        handle_key = (os.getpid(), name)
        if handle_key not in self._handles:
            self._handles[handle_key] = safe_open(self.path / name, framework="pt")
        return self._handles[handle_key]

    def size_bytes(self) -> int:
        """Bytes of every shard of the store."""
        return sum(shard.stat().st_size for shard in self.path.glob("shard-*.safetensors"))

    @contextmanager
    def writer(self) -> Iterator["StoreWriter"]:
        """A `StoreWriter` whose last shard is completed when the block ends (also on an error)."""
        writer = StoreWriter(self)
        try:
            yield writer
        finally:
            writer.flush()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}  # file handles stay with their process


class StoreWriter:
    """Adds videos to a store: their features go to this writer's own shards, their records to its own index, each
    shard completed (written, synced, renamed into place) before its records are appended."""

    def __init__(self, store: FeatureStore):
        self.store = store
        self.id = uuid.uuid4().hex[:16]
        self.index = store.path / f"index-{self.id}.jsonl"
        self._tensors: dict[str, torch.Tensor] = {}
        self._records: list[dict[str, Any]] = []
        self._bytes = 0
        self._started: float | None = None
        self._shards = 0

    def add(
        self,
        video: str | os.PathLike,
        window: Mapping[str, float | int] | None,
        features: Mapping[str, torch.Tensor],
        sha256: str | None = None,
        flipped_languagebind: torch.Tensor | None = None,
    ) -> str:
        """Add one video's `{encoder: (tokens, dim)}` features (and, for a store that keeps them, LanguageBind's of
        the flipped clip); returns its key."""
        if self.store.flipped_languagebind and flipped_languagebind is None:
            raise ValueError(f"{self.store.path} keeps flipped LanguageBind features: pass `flipped_languagebind`")
        dtype = self.store.dtype
        record = _source_record(Path(video), window, sha256 or file_sha256(video))
        tensors = dict(features)
        if self.store.flipped_languagebind:
            tensors[FLIPPED_ENCODER + FLIPPED] = flipped_languagebind
        for name, tensor in tensors.items():
            stored = tensor.detach().to("cpu", dtype).contiguous()
            self._tensors[f"{record['key']}/{name}"] = stored
            self._bytes += stored.numel() * stored.element_size()
        self._records.append(record)
        self._started = self._started or time.monotonic()
        if self._bytes >= SHARD_BYTES or time.monotonic() - self._started >= SHARD_SECONDS:
            self.flush()
        return record["key"]

    def add_failure(self, video: str | os.PathLike, window: Mapping[str, float | int] | None, error: str) -> None:
        """Record that a video could not be encoded (training skips it, `merv encode` does not retry it)."""
        self._records.append({**_source_record(Path(video), window, file_sha256(video)), "error": error})

    def flush(self) -> None:
        """Complete the current shard and append its records to the index."""
        if self._tensors:
            shard = f"shard-{self.id}-{self._shards:05d}.safetensors"
            temporary = self.store.path / f".{shard}.partial"
            save_file(self._tensors, temporary)
            _make_readable_as_umask_allows(temporary)
            _sync(temporary)
            os.replace(temporary, self.store.path / shard)
            self._shards += 1
            for record in self._records:
                if "error" not in record:
                    record["shard"] = shard
        if self._records:
            lines = "".join(json.dumps(record) + "\n" for record in self._records)
            with open(self.index, "a", encoding="utf-8") as file:
                file.write(lines)
                file.flush()
                os.fsync(file.fileno())
        self._tensors, self._records, self._bytes, self._started = {}, [], 0, None
        self.store.refresh()


def _make_readable_as_umask_allows(path: Path) -> None:
    """safetensors writes files readable by their owner only (mode 0600); give a shard the mode any new file gets
    (0666 less the umask), so a store shared between users is readable."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def _sync(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(text, encoding="utf-8")
    _sync(temporary)
    os.replace(temporary, path)


__all__ = [
    "FeatureStore",
    "FeatureStoreError",
    "FeatureStoreMismatchError",
    "StoreWriter",
    "StoredVideo",
    "compute_frozen_features",
    "feature_fingerprint",
    "feature_key",
    "file_sha256",
    "fingerprint_differences",
    "weights_digest",
]

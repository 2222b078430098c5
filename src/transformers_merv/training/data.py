"""Training data in the authors' (Video-LLaVA) JSON format, and the collator that batches it.

The JSON is a list of examples `{"id": ..., "video": "<path>" | "image": "<path>" | neither, "conversations":
[{"from": "human", "value": "<video>\\nWhat is ...?"}, {"from": "gpt", "value": "..."}, ...]}` with media paths
relative to a root folder. Two formats, as the authors' two datasets:

- `"chat"` (`FinetuneVideoDataset`): the whole conversation through the processor's chat template; the loss is taken
  on the assistant answers only (their end-of-turn token included).
- `"caption"` (`AlignVideoDataset`, stage 1): the human turn is dropped and the sequence is
  `[BOS] [visual tokens] {caption}</s>`, the loss taken on the caption and `</s>`.

The `<video>`/`<image>` placeholders are removed from the text: the visual tokens always go right after BOS, where
the authors' model splices them whatever the text says. An image is a one-frame video that the frame sampling
repeats, as the authors do.

With a feature store (`inference.feature_store`, built by `merv encode`), items carry each video's frozen features
(`frozen_video_features`) read from the store instead of its pixels: nothing is decoded and the encoders do not run.
The text goes through the processor exactly as with the video (same ids, labels, truncation). With the authors'
random LanguageBind flip (`languagebind_random_flip`), the store keeps LanguageBind's features of both the clip and
its mirror image, and each item draws which one to use as the video processor draws its flip (Python `random`, with
the same probability, one draw per video): the same distribution, and under the same seed the same draws.
"""

import copy
import json
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset
from transformers.utils import logging

from transformers.image_processing_utils import BatchFeature

from ..inference.feature_store import FeatureStore, FeatureStoreError
from ..media_limits import MediaLimitError, check_regular_file
from ..modeling_merv import IGNORE_INDEX
from ..processing_merv import MervProcessor
from ..video_io import VideoDecodingError, load_image, make_batched_video_inputs
from ..video_processing_merv import LANGUAGEBIND_FLIP_PROBABILITY


logger = logging.get_logger(__name__)

ROLES = {"human": "user", "gpt": "assistant"}
MEDIA_KEYS = ("video", "image")
PLACEHOLDER_PATTERN = re.compile(r"\s*<(?:video|image)>\s*")
MEDIA_ERRORS = (VideoDecodingError, MediaLimitError, OSError)
"""What reading a video or image raises for a missing, corrupt, unsupported or oversized file (PIL's errors are
`OSError`s)."""
MAX_LISTED_PROBLEMS = 10
FILLER_SIDE = 64
VIDEO_INPUTS = ("pixel_values_videos", "frozen_video_features")
"""An item's video: its pixels, or its frozen features from a feature store."""

DataFormat = Literal["chat", "caption"]
BadExamplePolicy = Literal["skip", "error"]
DATA_FORMATS = ("chat", "caption")
BAD_EXAMPLE_POLICIES = ("skip", "error")


@dataclass(frozen=True)
class BadExample:
    """An example that cannot be used, and why."""

    example: str
    reason: str

    def __str__(self) -> str:
        return f"{self.example}: {self.reason}"


class BadExampleError(ValueError):
    """Examples cannot be used: malformed entries, or videos or images that are missing or cannot be read. They are
    listed in `bad_examples`."""

    def __init__(self, message: str, bad_examples: Sequence[BadExample] = ()):
        super().__init__(message)
        self.bad_examples = list(bad_examples)


@dataclass(frozen=True)
class Example:
    """One validated JSON entry: its media and its turns as `(role, text)` with the placeholders removed."""

    index: int
    id: str | None
    media_kind: str | None
    media_path: Path | None
    turns: tuple[tuple[str, str], ...]

    @property
    def name(self) -> str:
        """How messages refer to it: its position in the JSON list and its id."""
        return f"entry {self.index} (id {self.id!r})"


class _InvalidEntry(Exception):
    """Why a JSON entry cannot be used (`parse_example` adds which entry)."""


def parse_example(raw: Any, index: int, media_root: Path, data_format: DataFormat) -> Example:
    """Validate one JSON entry; raises `BadExampleError` naming the entry and the problem."""
    try:
        media_kind, media_path = _media_of(raw, media_root)
        turns = _turns_of(raw["conversations"], data_format, has_media=media_kind is not None)
    except _InvalidEntry as error:
        problem = BadExample(f"entry {index} (id {raw.get('id') if isinstance(raw, dict) else None!r})", str(error))
        raise BadExampleError(str(problem), [problem]) from None
    return Example(index, raw.get("id"), media_kind, media_path, turns)


def _media_of(raw: Any, media_root: Path) -> tuple[str | None, Path | None]:
    if not isinstance(raw, dict) or not isinstance(raw.get("conversations"), list):
        raise _InvalidEntry('expected an object with a "conversations" list')
    media_keys = [key for key in MEDIA_KEYS if raw.get(key) is not None]
    if len(media_keys) > 1:
        raise _InvalidEntry('has both "video" and "image"; one video or image per example')
    if not media_keys:
        return None, None
    kind = media_keys[0]
    if not isinstance(raw[kind], str):
        raise _InvalidEntry(f'"{kind}" must be a path relative to the media root, got {raw[kind]!r}')
    path = media_root / raw[kind]
    if not path.exists():
        raise _InvalidEntry(f"no {kind} file at {str(path)!r}")
    try:
        check_regular_file(path, repr(str(path)))
    except MediaLimitError as error:
        raise _InvalidEntry(str(error)) from None
    return kind, path


def _turns_of(conversation: list, data_format: DataFormat, has_media: bool) -> tuple[tuple[str, str], ...]:
    """`(role, text)` per turn, placeholders removed, after checking roles, placeholders and the format."""
    turns, num_placeholders = [], 0
    for position, turn in enumerate(conversation):
        if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
            raise _InvalidEntry(f'turn {position} must be {{"from": "human" | "gpt", "value": str}}, got {turn!r}')
        role = ROLES[turn["from"]]
        if role != ("user" if position % 2 == 0 else "assistant"):
            raise _InvalidEntry(f"turns must alternate human, gpt, ...; turn {position} is from {turn['from']!r}")
        placeholders = len(PLACEHOLDER_PATTERN.findall(turn["value"]))
        if placeholders and role == "assistant":
            raise _InvalidEntry(f"the answer in turn {position} holds a <video>/<image> placeholder")
        num_placeholders += placeholders
        turns.append((role, PLACEHOLDER_PATTERN.sub(" ", turn["value"]).strip() if placeholders else turn["value"]))
    if len(turns) < 2:
        raise _InvalidEntry("needs a human turn and an answer")
    if data_format == "caption" and len(turns) != 2:
        raise _InvalidEntry(f"the caption format takes one human turn and one caption, got {len(turns)} turns")
    if num_placeholders > has_media:
        raise _InvalidEntry(
            f"has {num_placeholders} <video>/<image> placeholder(s) but {int(has_media)} video or image"
        )
    return tuple(turns)


class VideoLlavaDataset(Dataset):
    r"""
    Examples of a Video-LLaVA / MERV training JSON, tokenized and with their videos processed by a `MervProcessor`.

    Each item is `{"input_ids", "attention_mask", "labels"}` (1-D) plus, for examples with a video or image,
    `"pixel_values_videos"` (the video's packed pixels, `(D,)`); labels are -100 except on the tokens to learn (see the
    module docstring). Batch items with `MervDataCollator`.

    Bad examples never surface as an unclear crash hours into training. Malformed entries and missing files are found
    when the dataset is built; a video or image that cannot be decoded is found when first read (or up front with
    `check_media()`). With `on_bad_example="error"` the first of these raises a `BadExampleError` naming the JSON entry
    and the file (at build time, all malformed or missing ones at once); with `"skip"` each is logged and recorded in
    `skipped`, and an unreadable example is replaced by the next readable one in the JSON order, so an index always
    gives a real example. (With DataLoader workers, each worker records the skips it meets in its own copy.)

    Args:
        data_path (`str` or `os.PathLike`):
            The JSON file.
        media_root (`str` or `os.PathLike`):
            The folder that the entries' `"video"` and `"image"` paths are relative to.
        processor ([`MervProcessor`]):
            Tokenizer, chat template and video processor of the model to train.
        data_format (`"chat"` or `"caption"`, *optional*, defaults to `"chat"`):
            `"chat"` for instruction tuning, `"caption"` for the authors' alignment stage.
        on_bad_example (`"skip"` or `"error"`, *optional*, defaults to `"skip"`):
            What to do with malformed entries and missing or unreadable media.
        max_length (`int`, *optional*):
            Truncate sequences (visual tokens included) to this length. The authors cut the text to 2048 tokens
            before adding 1024 visual tokens: 3072 here.
        chat_template (`str`, *optional*):
            Name of the processor's chat template to use (default: its default template).
        cache (`bool`, *optional*, defaults to `False`):
            Keep every encoded example in memory, so later epochs skip decoding and preprocessing (examples of one
            video share its pixel tensors). For datasets that fit in RAM, e.g. small ones trained for many epochs;
            with DataLoader workers, use `persistent_workers=True` (each worker keeps its own cache).
        feature_store ([`FeatureStore`], *optional*):
            Give each item its video's frozen features from this store (opened with the model's fingerprint) instead
            of its pixels. Every video and image of the JSON must be in it (`merv encode DATA.json --video-dir
            MEDIA_ROOT --output STORE`); those the store records as unreadable are bad examples, handled as
            `on_bad_example` says.
    """

    def __init__(
        self,
        data_path: str | os.PathLike,
        media_root: str | os.PathLike,
        processor: MervProcessor,
        data_format: DataFormat = "chat",
        on_bad_example: BadExamplePolicy = "skip",
        max_length: int | None = None,
        chat_template: str | None = None,
        cache: bool = False,
        feature_store: FeatureStore | None = None,
    ):
        if data_format not in DATA_FORMATS:
            raise ValueError(f"`data_format` must be one of {DATA_FORMATS}, got {data_format!r}")
        if on_bad_example not in BAD_EXAMPLE_POLICIES:
            raise ValueError(f"`on_bad_example` must be one of {BAD_EXAMPLE_POLICIES}, got {on_bad_example!r}")
        if max_length is not None and max_length <= processor.num_video_tokens + 1:
            raise ValueError(
                f"`max_length`={max_length} leaves no room for text after BOS and the "
                f"{processor.num_video_tokens} visual tokens"
            )
        self.processor = processor
        self.data_format = data_format
        self.on_bad_example = on_bad_example
        self.max_length = max_length
        self.chat_template = chat_template
        self.skipped: list[BadExample] = []
        self._unreadable: set[int] = set()
        self._cache: dict[int, dict[str, Any]] | None = {} if cache else None
        self._pixels_by_media: dict[str, torch.Tensor] = {}
        self.feature_store = feature_store
        self._text_processor = processor if feature_store is None else _counting_videos_only(processor)
        self._feature_keys: dict[int, str] = {}
        self.examples = self._parse(Path(data_path), Path(media_root))
        if feature_store is not None:
            self._find_features(Path(data_path), Path(media_root))

    def _parse(self, data_path: Path, media_root: Path) -> list[Example]:
        check_regular_file(data_path, str(data_path))
        try:
            entries = json.loads(data_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BadExampleError(f"{data_path} is not valid JSON: {error}") from error
        if not isinstance(entries, list):
            raise BadExampleError(f"{data_path} must hold a JSON list of examples, got {type(entries).__name__}")
        examples, problems = [], []
        for index, raw in enumerate(entries):
            try:
                examples.append(parse_example(raw, index, media_root, self.data_format))
            except BadExampleError as error:
                problems.extend(error.bad_examples)
        self._report(problems, f"{data_path}: {len(problems)} of {len(entries)} examples cannot be used")
        if not examples:
            raise BadExampleError(f"{data_path} holds no usable example")
        return examples

    def _find_features(self, data_path: Path, media_root: Path) -> None:
        """Key every example's media in the feature store; refuse a store that lacks some (or the flipped
        LanguageBind features the processor's random flip needs), report those it records as unreadable."""
        store = self.feature_store
        if self.processor.video_processor.languagebind_random_flip and not store.flipped_languagebind:
            raise FeatureStoreError(
                f"{store.path}: the processor flips LanguageBind's clips at random (`languagebind_random_flip`) but "
                f"the store keeps no flipped features; build it with `merv encode --flipped-languagebind`"
            )
        missing, unreadable = [], []
        for example in self.examples:
            if example.media_path is None:
                continue
            key = store.key_for(example.media_path)
            self._feature_keys[example.index] = key
            if store.failure(key) is not None:
                unreadable.append(BadExample(example.name, _unreadable(example, store.failure(key))))
            elif key not in store:
                missing.append(str(example.media_path))
        if missing:
            listed = ", ".join(missing[:MAX_LISTED_PROBLEMS])
            raise FeatureStoreError(
                f"{store.path} lacks the features of {len(missing)} videos or images of {data_path} ({listed}); add "
                f"them with `merv encode {data_path} --video-dir {media_root} --output {store.path}`"
            )
        self._report(unreadable, f"{store.path}: {len(unreadable)} videos or images could not be read when encoded")
        unusable = {problem.example for problem in unreadable}
        self.examples = [example for example in self.examples if example.name not in unusable]

    def _report(self, problems: list[BadExample], summary: str) -> None:
        """Raise for `problems` (policy "error"), or log and record them as skipped."""
        if not problems:
            return
        listed = "\n".join(f"  {problem}" for problem in problems[:MAX_LISTED_PROBLEMS])
        more = f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more" if len(problems) > MAX_LISTED_PROBLEMS else ""
        if self.on_bad_example == "error":
            message = f"{summary}:\n{listed}{more}\n(pass on_bad_example='skip' to leave them out)"
            raise BadExampleError(message, problems)
        self.skipped.extend(problems)
        logger.warning(f"{summary}; skipping them:\n{listed}{more}")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        for offset in range(len(self.examples)):
            position = (index + offset) % len(self.examples)
            if position in self._unreadable:
                continue
            if self._cache is not None and position in self._cache:
                return self._cache[position]
            example = self.examples[position]
            try:
                item = self._encode(example)
            except MEDIA_ERRORS as error:
                self._mark_unreadable(position, _unreadable(example, error))
                continue
            if self._cache is not None:
                self._cache[position] = self._share_pixels(example, item)
            return item
        raise BadExampleError("Every example of the dataset has an unreadable video or image", self.skipped)

    def _share_pixels(self, example: Example, item: dict[str, Any]) -> dict[str, Any]:
        """The item, its pixel tensors replaced by those already cached for the same media file."""
        if "pixel_values_videos" in item:
            item["pixel_values_videos"] = self._pixels_by_media.setdefault(
                str(example.media_path), item["pixel_values_videos"]
            )
        return item

    def _mark_unreadable(self, position: int, reason: str) -> None:
        problem = BadExample(self.examples[position].name, reason)
        if self.on_bad_example == "error":
            raise BadExampleError(f"{problem} (pass on_bad_example='skip' to skip such examples)", [problem])
        self._unreadable.add(position)
        self.skipped.append(problem)
        logger.warning(f"Skipping {problem} ({len(self.skipped)} skipped so far in this process)")

    def check_media(self, num_workers: int = 0) -> None:
        """Decode every example's video or image now, as training will, so that unreadable files are reported
        (`"error"`) or left out (`"skip"`) before training instead of when first met. Costs one pass of decoding,
        spread over `num_workers` DataLoader worker processes."""
        loader = DataLoader(_MediaCheck(self), batch_size=None, num_workers=num_workers)
        failures = dict(result for result in loader if result is not None)
        problems = [BadExample(self.examples[position].name, reason) for position, reason in sorted(failures.items())]
        self._report(problems, f"{len(failures)} of {len(self.examples)} videos or images cannot be read")
        self.examples = [example for position, example in enumerate(self.examples) if position not in failures]
        self._unreadable.clear()

    def _media(self, example: Example) -> str | Image.Image | None:
        """What the processor takes as the video: a path (decoded there) or an image (a one-frame video). With a
        feature store, the path: only the text is processed."""
        if example.media_kind is None:
            return None
        if example.media_kind == "video" or self.feature_store is not None:
            return str(example.media_path)
        return load_image(example.media_path, repr(str(example.media_path)))

    def _encode(self, example: Example) -> dict[str, Any]:
        media = self._media(example)
        if self.data_format == "caption":
            inputs, labels = self._encode_caption(example, media)
        else:
            inputs, labels = self._encode_chat(example, media)
        item = {
            "input_ids": inputs["input_ids"][0, : self.max_length],
            "attention_mask": inputs["attention_mask"][0, : self.max_length],
            "labels": labels[0, : self.max_length],
        }
        if media is not None and self.feature_store is not None:
            item["frozen_video_features"] = self._stored_features(example)
        elif media is not None:
            item["pixel_values_videos"] = inputs["pixel_values_videos"][0]
        return item

    def _stored_features(self, example: Example) -> dict[str, torch.Tensor]:
        """The example's frozen features; LanguageBind's of the mirrored clip when the flip is drawn, as the video
        processor draws it."""
        flipped = (
            self.processor.video_processor.languagebind_random_flip and random.random() < LANGUAGEBIND_FLIP_PROBABILITY
        )
        return self.feature_store.get(self._feature_keys[example.index], flipped=flipped)

    def _encode_chat(self, example: Example, media: str | Image.Image | None) -> tuple[dict, torch.Tensor]:
        """The conversation through the chat template; labels on the assistant turns (`{% generation %}` blocks)."""
        conversation = [{"role": role, "content": [{"type": "text", "text": text}]} for role, text in example.turns]
        if media is not None:
            conversation[0]["content"].insert(0, {"type": "video", "video": media})
        inputs = self._text_processor.apply_chat_template(
            conversation,
            chat_template=self.chat_template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            return_tensors="pt",
        )
        return inputs, inputs["input_ids"].masked_fill(inputs["assistant_masks"] == 0, IGNORE_INDEX)

    def _encode_caption(self, example: Example, media: str | Image.Image | None) -> tuple[dict, torch.Tensor]:
        """`[BOS] [visual tokens] {caption}</s>` with labels on the caption and `</s>` (the human turn is dropped)."""
        tokenizer = self.processor.tokenizer
        caption = example.turns[-1][1].strip()
        prefix = self.processor.video_token if media is not None else ""
        inputs = self._text_processor(
            text=prefix + caption + tokenizer.eos_token,
            videos=None if media is None else [media],
            return_tensors="pt",
        )
        input_ids = inputs["input_ids"]
        not_caption = input_ids == self.processor.video_token_id
        if tokenizer.bos_token_id is not None:
            not_caption[:, 0] |= input_ids[:, 0] == tokenizer.bos_token_id
        return inputs, input_ids.masked_fill(not_caption, IGNORE_INDEX)


class _VideoCounter:
    """Stands in for the video processor when a feature store gives the videos: it only counts them (the processor
    expands one `<video>` per video), so the text is processed exactly as with the videos and none is read."""

    def __call__(self, videos: object, **kwargs) -> BatchFeature:
        return BatchFeature({"pixel_values_videos": torch.empty(len(make_batched_video_inputs(videos)), 0)})


def _counting_videos_only(processor: MervProcessor) -> MervProcessor:
    """A shallow copy of `processor` whose video processor only counts the videos (`_VideoCounter`)."""
    text_only = copy.copy(processor)
    text_only.video_processor = _VideoCounter()
    return text_only


class _MediaCheck(Dataset):
    """`(position, reason)` for each example of a `VideoLlavaDataset` whose media cannot be decoded, else None."""

    def __init__(self, dataset: VideoLlavaDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset.examples)

    def __getitem__(self, position: int) -> tuple[int, str] | None:
        example = self.dataset.examples[position]
        try:
            media = self.dataset._media(example)
            if example.media_kind == "video":
                self.dataset.processor.video_processor(media)
        except MEDIA_ERRORS as error:
            return position, _unreadable(example, error)
        return None


def _unreadable(example: Example, error: Exception) -> str:
    return f"cannot read {example.media_kind} {str(example.media_path)!r}: {error}"


@dataclass
class MervDataCollator:
    """Batches `VideoLlavaDataset` items for training: right-pads `input_ids` (with the pad id), `labels` (with
    -100) and `attention_mask` (with 0), and stacks the videos of the rows that have one, in row order. The model
    fills the placeholders of the batch in order with the videos, so rows without a video (text-only) mix freely
    with rows with one.

    A batch without any video gets `filler` appended: a row with a black video (with a feature store: zero frozen
    features) and no label, which adds nothing to the loss but runs the encoders, projectors and fusion.
    Data-parallel processes then always run the same modules: FSDP and DeepSpeed ZeRO-3 gather parameters module by
    module, and a process that skipped the visual modules while the others ran them would hang or fail; DDP would
    find unused parameters. `from_processor` builds it.

    Items from a feature store carry `frozen_video_features` (`{encoder: (tokens, dim)}`), batched per encoder."""

    pad_token_id: int
    filler: dict[str, Any] | None = None

    @classmethod
    def from_processor(
        cls,
        processor: MervProcessor,
        video_in_every_batch: bool = True,
        frozen_feature_shapes: dict[str, tuple[int, int]] | None = None,
    ) -> "MervDataCollator":
        """The collator for `processor`'s items; for items from a feature store, pass the model's
        `config.frozen_feature_shapes()` (the filler's features)."""
        if processor.tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer has no pad token; add one (MERV's Llama-2 tokenizer pads with <PAD>)")
        filler = filler_item(processor, frozen_feature_shapes) if video_in_every_batch else None
        return cls(processor.tokenizer.pad_token_id, filler)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if self.filler is not None and not any(key in item for item in items for key in VIDEO_INPUTS):
            items = [*items, self.filler]
        batch = {
            key: pad_sequence([item[key] for item in items], batch_first=True, padding_value=padding)
            for key, padding in (("input_ids", self.pad_token_id), ("attention_mask", 0), ("labels", IGNORE_INDEX))
        }
        videos = [item["pixel_values_videos"] for item in items if "pixel_values_videos" in item]
        if videos:
            batch["pixel_values_videos"] = torch.stack(videos)
        stored = [item["frozen_video_features"] for item in items if "frozen_video_features" in item]
        if stored:
            batch["frozen_video_features"] = {name: torch.stack([row[name] for row in stored]) for name in stored[0]}
        return batch


def filler_item(
    processor: MervProcessor, frozen_feature_shapes: dict[str, tuple[int, int]] | None = None
) -> dict[str, Any]:
    """`[BOS] [visual tokens]` of a black one-frame video, without labels; with `frozen_feature_shapes`, zero frozen
    features stand for the video."""
    input_ids = torch.tensor(processor.prompt_ids(processor.video_token))
    item = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "labels": torch.full_like(input_ids, IGNORE_INDEX),
    }
    if frozen_feature_shapes is not None:
        item["frozen_video_features"] = {name: torch.zeros(shape) for name, shape in frozen_feature_shapes.items()}
        return item
    # a black frame is its own mirror image: no flip is drawn for it, which would only shift the random stream
    video_processor = copy.copy(processor.video_processor)
    video_processor.languagebind_random_flip = False
    black = Image.new("RGB", (FILLER_SIDE, FILLER_SIDE))
    item["pixel_values_videos"] = video_processor([black])["pixel_values_videos"][0]
    return item

"""What `merv encode` reads: the media items (a file and its clip window) of its sources.

A source is one of:

- a video or image file (any file that is not `.json`: one that cannot be decoded is recorded as unreadable);
- a folder, searched recursively for files with a video (`evaluation.files.VIDEO_EXTENSIONS`) or image
  (`IMAGE_EXTENSIONS`) extension, hidden files and folders left out, in sorted path order;
- training data in the authors' (Video-LLaVA) JSON format (entries with `"conversations"` and a `"video"` or
  `"image"` path relative to `--video-dir`; entries without media are skipped);
- an evaluation question file (records with `"question_id"` and `"video_name"`, the video found in `--video-dir`
  by `evaluation.files.find_video`), a question's clip window (`time`, `end_frame`) making an item of its own.

Every problem (a missing source or file, a malformed JSON entry) is an `EncodingInputError` naming the file, raised
while listing, before any model work.
"""

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluation.file_checks import question_problems
from ..evaluation.files import VIDEO_EXTENSIONS, question_window, find_video
from ..training.data import BadExampleError, parse_example


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
"""Image files a folder source contributes (an image is a one-frame video, as training treats it)."""
JSON_SUFFIX = ".json"
TRAINING_DATA_FORMAT = "chat"
"""`parse_example`'s format for checking training entries: it accepts the caption format's entries too."""


class EncodingInputError(ValueError):
    """`merv encode` cannot start from these inputs (a source, `--video-dir`, `--output`, `--batch-size`)."""


@dataclass(frozen=True)
class MediaItem:
    """One thing to encode: a video (in its clip window, if any) or an image file."""

    path: Path
    kind: str = "video"
    """"video" or "image"."""
    window: Mapping[str, float | int] = field(default_factory=dict)
    """The clip window (`video_io.clip_window`), empty for the whole video."""


def list_media(sources: Sequence[str | Path], video_dir: str | Path | None = None) -> list[MediaItem]:
    """The media items of `sources` in order (see the module docstring); JSON sources resolve against `video_dir`."""
    if not sources:
        raise EncodingInputError("no source given: name video files, folders, training JSON or question files")
    if video_dir is not None and not Path(video_dir).is_dir():
        raise EncodingInputError(f"--video-dir {video_dir} is not a directory")
    return [item for source in sources for item in _items_of(Path(source), video_dir)]


def _items_of(source: Path, video_dir: str | Path | None) -> list[MediaItem]:
    if source.is_dir():
        return list(_folder_items(source))
    if not source.exists():
        raise EncodingInputError(f"{source}: no such file or folder")
    if source.suffix.lower() != JSON_SUFFIX:
        return [MediaItem(source, _kind_of(source))]
    if video_dir is None:
        raise EncodingInputError(f"{source}: a JSON source needs --video-dir, the folder its videos are in")
    records = _read_json_list(source)
    if all(isinstance(record, dict) and "conversations" in record for record in records):
        return _training_items(source, records, Path(video_dir))
    if all(isinstance(record, dict) and {"question_id", "video_name"} <= record.keys() for record in records):
        return _question_items(source, records, Path(video_dir))
    raise EncodingInputError(
        f'{source}: neither training data (a list of entries with "conversations" and a "video" or "image") nor '
        'an evaluation question file (a list of records with "question_id" and "video_name")'
    )


def _kind_of(path: Path) -> str:
    return "image" if path.suffix.lower() in IMAGE_EXTENSIONS else "video"


def _folder_items(folder: Path) -> Iterator[MediaItem]:
    extensions = (*VIDEO_EXTENSIONS, *IMAGE_EXTENSIONS)
    for path in sorted(folder.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
        if not hidden and path.suffix.lower() in extensions and path.is_file():
            yield MediaItem(path, _kind_of(path))


def _read_json_list(path: Path) -> list[Any]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise EncodingInputError(f"{path}: cannot read it as JSON: {error}") from error
    if not isinstance(records, list) or not records:
        raise EncodingInputError(f"{path}: expected a non-empty JSON list of training entries or question records")
    return records


def _training_items(source: Path, entries: list[Any], media_root: Path) -> list[MediaItem]:
    items = []
    for index, entry in enumerate(entries):
        try:
            example = parse_example(entry, index, media_root, TRAINING_DATA_FORMAT)
        except BadExampleError as error:
            raise EncodingInputError(f"{source}: {error}") from None
        if example.media_path is not None:
            items.append(MediaItem(example.media_path, example.media_kind))
    return items


def _question_items(source: Path, records: list[dict], video_dir: Path) -> list[MediaItem]:
    items = []
    for record in records:
        problems = question_problems(record, multiple_choice=False)
        if problems:
            raise EncodingInputError(f"{source}: {'; '.join(problems)}")
        try:
            path = find_video(video_dir, record["video_name"])
        except (OSError, ValueError) as error:
            raise EncodingInputError(f"{source}: question_id {record['question_id']!r}: {error}") from None
        items.append(MediaItem(path, "video", question_window(record)))
    return items


__all__ = ["IMAGE_EXTENSIONS", "EncodingInputError", "MediaItem", "list_media"]

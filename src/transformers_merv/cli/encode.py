"""`merv encode`: a feature store of the frozen encoders' features of videos, folders, training data and question
files, in one process or in each of those a launcher (`torchrun`, `accelerate launch`) started."""

import argparse
from pathlib import Path

from ..encoding import DEFAULT_BATCH_SIZE, encode_features
from .arguments import add_model_arguments, positive_int
from .video_questions import model_id


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "encode",
        help="store the frozen encoders' features of videos for training and evaluation",
        description="Decode and encode videos once (the frozen encoders and the parameter-free pooling) into a "
        "feature store: SHA-256 content keys, resumable, one record per video and clip window (docs: Feature store).",
    )
    parser.add_argument(
        "sources",
        nargs="+",
        type=Path,
        metavar="SOURCE",
        help="a video or image file, a folder (searched recursively for videos and images), training data JSON "
        '(entries with "video" or "image") or an evaluation question file (records with "video_name")',
    )
    parser.add_argument("--output", type=Path, required=True, metavar="STORE", help="feature store folder")
    parser.add_argument(
        "--video-dir", type=Path, help="folder the videos and images named in JSON sources are in (required for them)"
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        help="videos per encoder call (default %(default)s)",
    )
    parser.add_argument(
        "--flipped-languagebind",
        action=argparse.BooleanOptionalAction,
        help="also keep LanguageBind's features of the horizontally flipped clip, for training with "
        "languagebind_random_flip (default: on when the model's processor has languagebind_random_flip on)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    summary = encode_features(
        args.sources,
        args.output,
        model_id(args),
        video_dir=args.video_dir,
        dtype=args.dtype,
        batch_size=args.batch_size,
        flipped_languagebind=args.flipped_languagebind,
        device=args.device,
    )
    if summary is not None:
        print(summary.report())
    return 0

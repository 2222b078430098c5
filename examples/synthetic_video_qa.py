"""Generate the synthetic video QA dataset (`transformers_merv.synthetic`): videos and the authors' JSON files.

    python examples/synthetic_video_qa.py --output-dir data/synthetic                  # 2000/200/400 videos
    python examples/synthetic_video_qa.py --output-dir data/tiny --train 40 --validation 8 --test 8 --seed 1
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import av

from transformers_merv.synthetic import DEFAULT_NUM_VIDEOS, SPLITS, generate_dataset


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python examples/synthetic_video_qa.py",
        description="Generate the synthetic video QA dataset (videos and the authors' JSON files).",
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="new or empty directory to write to")
    for split in SPLITS:
        parser.add_argument(f"--{split}", type=_count, default=DEFAULT_NUM_VIDEOS[split], help=f"{split} videos")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        summary = generate_dataset(
            args.output_dir, {split: getattr(args, split) for split in SPLITS}, seed=args.seed, progress=True
        )
    except (OSError, ValueError, av.error.FFmpegError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for split, info in summary["splits"].items():
        print(f"{split}: {info['num_videos']} videos, {sum(info['num_questions'].values())} questions")
    print(f"wrote {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

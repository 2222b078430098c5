"""`merv caption VIDEO [--windows SECONDS] [--format srt|vtt|json] [--output FILE]`: timestamped captions, one per
window of the video (each the answer to `--prompt`), as subtitles or one JSON document."""

import argparse
from pathlib import Path

from ..inference.captions import to_srt, to_vtt
from ..inference.windows import DEFAULT_CAPTION_PROMPT
from .arguments import add_question_arguments
from .windows import add_window_arguments, answers_from_args, check_output_folder, check_window_flags, windows_document


DEFAULT_WINDOW_SECONDS = 10.0
FORMATS = ("srt", "vtt", "json")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "caption",
        help="timestamped captions of a video, window by window",
        description="Caption each window of a video (the answer to --prompt) and write the captions as SRT or "
        "WebVTT subtitles, or as one JSON document, to stdout or --output.",
    )
    add_question_arguments(parser, None, clip_window=False)
    add_window_arguments(parser, DEFAULT_WINDOW_SECONDS)
    parser.add_argument("--format", choices=FORMATS, default=FORMATS[0], help="captions format (default: srt)")
    parser.add_argument("--output", type=Path, metavar="FILE", help="write the captions here (default: stdout)")
    parser.add_argument(
        "--prompt",
        default=DEFAULT_CAPTION_PROMPT,
        help=f"what each window answers (default: {DEFAULT_CAPTION_PROMPT!r})",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    check_window_flags(args)
    check_output_folder(args.output, "--output")
    _, windows = answers_from_args(args, args.prompt)
    windows = list(windows)
    if args.format == "json":
        text = windows_document(args, {"prompt": args.prompt}, windows) + "\n"
    else:
        text = (to_srt if args.format == "srt" else to_vtt)(windows)
    if args.output is None:
        print(text, end="")
        return 0
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as err:
        raise OSError(f"cannot write {args.output}: {err}") from err
    print(f"wrote {args.output}")
    return 0

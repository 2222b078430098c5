"""The converter's command line, shared by `merv convert` and `conversion/convert_merv_to_hf.py`: its flags
(`add_arguments`), what they run (`run`), and the script's entry (`main`)."""

import argparse
from collections.abc import Sequence
from pathlib import Path

from ..configuration_merv import ENCODER_CONFIG_KEYS
from ..inference.devices import DTYPES
from ..modeling_merv import MAX_SHARD_SIZE
from ..utils.console import add_debug_argument, run_reporting_errors
from . import convert
from .errors import ConversionError
from .sources import MERV_IMAGE_SIZE, EncoderSources


def parse_image_sizes(values: Sequence[str]) -> dict[str, int]:
    """`NAME=PIXELS` values of `--image-size` as `{encoder: pixels}`."""
    sizes = {}
    for value in values:
        name, _, size = value.partition("=")
        if name not in ENCODER_CONFIG_KEYS or not size.isdigit():
            raise ConversionError(
                f"--image-size expects NAME=PIXELS with NAME in {list(ENCODER_CONFIG_KEYS)}, got {value!r}"
            )
        if sizes.setdefault(name, int(size)) != int(size):
            raise ConversionError(f"--image-size gives {name} two sizes: {sizes[name]} and {size}")
    return sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The converter's flags, and `run` as what they run."""
    parser.add_argument("--run-dir", type=Path, required=True, help="authors' run directory")
    parser.add_argument("--llm", type=Path, required=True, help="LLM directory (config + tokenizer)")
    for name in ENCODER_CONFIG_KEYS:
        parser.add_argument(f"--{name}", type=Path, help=f"{name} weights directory (needed if the run uses it)")
    parser.add_argument(
        "--image-size",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME=PIXELS",
        help=f"input resolution per encoder (default {MERV_IMAGE_SIZE}, the authors' value); repeated flags add up",
    )
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument(
        "--dtype", choices=list(DTYPES), help="store the weights in this dtype (default: as the source)"
    )
    parser.add_argument(
        "--max-shard-size", default=MAX_SHARD_SIZE, help=f"largest safetensors shard (default {MAX_SHARD_SIZE})"
    )
    parser.add_argument("--verify", action="store_true", help="reload the output, compare every tensor, run a forward")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the output to this Hub model repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    add_debug_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Convert the authors' run the flags name, and report what was written."""
    encoders = EncoderSources(
        directories={name: getattr(args, name) for name in ENCODER_CONFIG_KEYS},
        image_sizes=parse_image_sizes(args.image_size),
    )
    report = convert(
        args.run_dir,
        args.llm,
        encoders,
        args.output_dir,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        verify=args.verify,
        push_to_hub=args.push_to_hub,
        private=args.private,
    )
    print(
        f"converted {args.run_dir} -> {report.output_dir} ({report.num_tensors} tensors, {len(report.shards)} shards)"
    )
    if report.verified_tensors is not None:
        print(f"verified: {report.verified_tensors} tensors equal their sources; forward pass ran")
    if report.commit_url:
        print(f"pushed: {report.commit_url}")
    return 0


def build_parser(prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None, description: str | None = None) -> int:
    """The converter as a script: failures are one `error:` line naming the file (`--debug`: the traceback)."""
    args = build_parser(description=description).parse_args(argv)
    return run_reporting_errors(args.run, args)

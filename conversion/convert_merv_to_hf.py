"""Convert an authors' MERV run (princetonvisualai/merv) to a transformers directory.

    python conversion/convert_merv_to_hf.py --run-dir RUN --llm LLM_DIR \
        [--languagebind DIR] [--dinov2 DIR] [--vivit DIR] [--siglip DIR] --output-dir OUT \
        [--dtype {float32,bfloat16,float16}] [--verify] [--push-to-hub REPO_ID [--private]]

RUN holds `config.json` and `checkpoints/latest-checkpoint.pt`; LLM_DIR the base LLM's config and tokenizer (its
weights come from the checkpoint); each encoder directory holds that encoder's public weights (LanguageBind: its own
directory; DINOv2 / SigLIP: timm `model.safetensors` or `pytorch_model.bin` + `config.json`; ViViT: a transformers
directory). The output loads with `AutoModel.from_pretrained(OUT)` after `import transformers_merv`, or with
`trust_remote_code=True` without it.
"""

import argparse
import sys
from pathlib import Path

from transformers_merv.configuration_merv import ENCODER_CONFIG_KEYS
from transformers_merv.conversion import DTYPES, MERV_IMAGE_SIZE, ConversionError, EncoderSources, convert


def parse_image_sizes(values: list[str]) -> dict[str, int]:
    sizes = {}
    for value in values:
        name, _, size = value.partition("=")
        if name not in ENCODER_CONFIG_KEYS or not size.isdigit():
            raise ConversionError(f"--image-size expects NAME=PIXELS with NAME in {list(ENCODER_CONFIG_KEYS)}, got {value!r}")
        sizes[name] = int(size)
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, required=True, help="authors' run directory")
    parser.add_argument("--llm", type=Path, required=True, help="LLM directory (config + tokenizer)")
    for name in ENCODER_CONFIG_KEYS:
        parser.add_argument(f"--{name}", type=Path, help=f"{name} weights directory (needed if the run uses it)")
    parser.add_argument(
        "--image-size", nargs="*", default=[], metavar="NAME=PIXELS",
        help=f"input resolution per encoder (default {MERV_IMAGE_SIZE}, the authors' value)",
    )
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--dtype", choices=list(DTYPES), help="store the weights in this dtype (default: as the source)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    parser.add_argument("--verify", action="store_true", help="reload the output, compare every tensor, run a forward")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the output to this Hub model repository")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        encoders = EncoderSources(
            directories={name: getattr(args, name) for name in ENCODER_CONFIG_KEYS},
            image_sizes=parse_image_sizes(args.image_size),
        )
        report = convert(
            args.run_dir, args.llm, encoders, args.output_dir, dtype=args.dtype, max_shard_size=args.max_shard_size,
            verify=args.verify, push_to_hub=args.push_to_hub, private=args.private,
        )
    except (ConversionError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"converted {args.run_dir} -> {report.output_dir} ({report.num_tensors} tensors, {len(report.shards)} shards)")
    if report.verified_tensors is not None:
        print(f"verified: {report.verified_tensors} tensors equal their sources; forward pass ran")
    if report.commit_url:
        print(f"pushed: {report.commit_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
